"""Text generation with the LM: a prompt in one call, then one token per step from the KV cache.

DSA layers keep their lightning indexer's keys in the cache too, and each step scores the new
query against every cached indexer key before its top-k, as DeepSeek-V3.2's inference does.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..utils.checks import check_int


def sample_next(logits: Tensor, *, temperature: float, top_p: float, generator: torch.Generator | None) -> Tensor:
    """Next token ``[B]`` from ``logits [B, vocab]``: argmax at ``temperature == 0``, else nucleus
    sampling (the smallest set of tokens whose probability reaches ``top_p``)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p  # tokens after the nucleus is full
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model, input_ids: Tensor, max_new_tokens: int, *, temperature: float = 0.0,
             top_p: float = 1.0, seed: int | None = None, use_cache: bool = True) -> Tensor:
    """``input_ids [B, N]`` and ``max_new_tokens`` more from ``model`` (a :class:`~.decoder.SparseLM`):
    ``[B, N + max_new_tokens]``.

    Args:
        temperature: 0 = greedy; otherwise the softmax temperature of sampling.
        top_p: nucleus sampling mass (1 = the whole distribution).
        seed: seeds the sampling generator (reproducible samples).
        use_cache: decode from the KV cache (one token per step); False re-runs the whole prefix
            every step (the reference the cache must equal).
    """
    if input_ids.dim() != 2 or input_ids.dtype != torch.long or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be a non-empty [B, N] int64 tensor, got {tuple(input_ids.shape)}")
    check_int("max_new_tokens", max_new_tokens, 0)
    if not isinstance(temperature, (int, float)) or temperature < 0:
        raise ValueError(f"temperature must be a number >= 0, got {temperature!r}")
    if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    model.eval()
    generator = None if seed is None else torch.Generator(device=input_ids.device).manual_seed(seed)
    tokens = input_ids
    cache = model.new_cache() if use_cache else None
    step_input = input_ids
    for _ in range(max_new_tokens):
        if use_cache:
            logits = model.decode(step_input, cache)[:, -1]
        else:
            logits = model(tokens).logits[:, -1]
        nxt = sample_next(logits, temperature=float(temperature), top_p=float(top_p), generator=generator)
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        step_input = nxt[:, None]
    return tokens

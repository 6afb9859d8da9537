"""Patch a trained LM: chosen attention heads replaced by their approximations, then its held-out loss.

The approximations run on the model's live projections (not the teacher signals): with heads of
layer 0 replaced, every later layer sees inputs the teacher never produced, as in deployment.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor

from ...models.decoder import SparseLM
from .approximators import HeadApprox


@contextmanager
def replaced_heads(model: SparseLM, approximations: dict[tuple[int, int], HeadApprox]) -> Iterator[None]:
    """Within the block, head ``h`` of layer ``l`` outputs ``approximations[(l, h)].predict(...)``.

    Each patched layer also records its attention input (the norm's output) for the DSA
    indexers, which read ``x``. Hooks are removed on exit.
    """
    layers = sorted({layer for layer, _ in approximations})
    inputs: dict[int, Tensor] = {}
    handles = []
    for layer in layers:
        block = model.blocks[layer]
        g = block.attn.config.n_heads // block.attn.config.n_kv_heads

        def keep_input(module, args, output, layer=layer):
            inputs[layer] = output.detach()

        def swap(q: Tensor, k: Tensor, v: Tensor, out: Tensor, layer=layer, g=g) -> Tensor:
            out = out.clone()
            for (l, h), approx in approximations.items():
                if l == layer:  # [B, T, D] of head h and its KV head
                    out[:, h] = approx.predict(q[:, h], k[:, h // g], v[:, h // g], inputs.get(layer)).to(out.dtype)
            return out

        handles.append(block.attn_norm.register_forward_hook(keep_input))
        block.attn.head_hook = swap
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for layer in layers:
            model.blocks[layer].attn.head_hook = None


@torch.no_grad()
def held_out_loss(model: SparseLM, batches: list[tuple[Tensor, Tensor]]) -> dict[str, float]:
    """Mean next-token cross entropy over ``batches`` (token-weighted), its perplexity and accuracy."""
    model.eval()
    total, correct, scored = 0.0, 0, 0
    for inputs, targets in batches:
        out = model(inputs, targets)
        total += float(out.loss) * out.scored
        correct += out.correct
        scored += out.scored
    loss = total / max(1, scored)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "accuracy": correct / max(1, scored)}

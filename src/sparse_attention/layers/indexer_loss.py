"""The DeepSeek-V3.2 indexer training objective: KL from the main attention to the indexer.

Dense warm-up (DeepSeek-V3.2 report, Eq. 3): for each query ``t`` the target ``p[t, :]`` is
the main attention distribution summed over all heads and L1-normalised, and the loss is
``KL(p[t, :] || softmax(I[t, :]))`` over the causally visible keys. Sparse training (Eq. 4):
the same, restricted to the selected set ``S_t``: ``p`` is the sparse attention actually used
(softmax over ``S_t`` per head, summed over heads, normalised) and the indexer softmax is taken
over ``S_t`` only. The target is always computed without gradient; the caller feeds the
indexer a detached input, so this loss trains the indexer and nothing else.

The losses are averaged over queries and batch (the report sums over ``t``; a mean keeps the
learning rate independent of the sequence length).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..ops.dense import _repeat_kv, dense_probabilities


@torch.no_grad()
def dense_attention_target(q: Tensor, k: Tensor, *, scale: float | None = None) -> Tensor:
    """Causal main attention summed over heads and L1-normalised.

    Args:
        q: ``[B, H, N, D]``; k: ``[B, H_kv, N, D]``.
    Returns:
        ``p [B, N, N]`` float32, rows sum to 1, zero above the diagonal.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    p = dense_probabilities(q, k, causal=True, scale=scale).sum(dim=1)  # [B, N, N]
    return p / p.sum(dim=-1, keepdim=True)


@torch.no_grad()
def sparse_attention_target(q: Tensor, k: Tensor, indices: Tensor, *, scale: float | None = None) -> Tensor:
    """The sparse attention over the selected keys, summed over heads and L1-normalised.

    Args:
        q: ``[B, H, N, D]``; k: ``[B, H_kv, N, D]``.
        indices: ``[B, N, K]`` selected key positions shared by all heads, ``-1`` = empty slot.
    Returns:
        ``p [B, N, K]`` float32 over the slots; empty slots 0; rows sum to 1 where a key is selected.
    """
    b, h, n, d = q.shape
    scale = d**-0.5 if scale is None else scale
    valid = indices >= 0  # [B, N, K]
    safe = indices.clamp(min=0)
    # Logits of every head at the selected keys, gathered from the dense logits: at top-k = N/4
    # the [B, H, N, N] logits take less memory than gathering [B, H_kv, N, K, D] key rows.
    logits = (q.float() @ _repeat_kv(k, h).float().transpose(-1, -2)) * scale  # [B, H, N, N]
    logits = logits.gather(-1, safe[:, None].expand(b, h, n, safe.shape[-1]))  # [B, H, N, K]
    logits = logits.masked_fill(~valid[:, None], float("-inf"))
    p = torch.nan_to_num(torch.softmax(logits, dim=-1), nan=0.0).sum(dim=1)  # [B, N, K]
    total = p.sum(dim=-1, keepdim=True)
    return p / torch.where(total > 0, total, torch.ones_like(total))


def kl_to_indexer(target: Tensor, scores: Tensor, mask: Tensor) -> Tensor:
    """Mean over rows of ``KL(target || softmax(scores))`` over the allowed entries.

    Args:
        target: ``[..., M]`` rows summing to 1 (0 on disallowed entries), no gradient.
        scores: ``[..., M]`` indexer scores (logits).
        mask: ``[..., M]`` bool, entries taking part in the softmax. Rows with no allowed
            entry are skipped.
    Returns:
        a scalar.
    """
    log_q = torch.log_softmax(scores.float().masked_fill(~mask, float("-inf")), dim=-1)
    # target * (log target - log q), with 0 * log 0 = 0 and masked entries contributing 0.
    log_p = torch.log(target.clamp_min(1e-30))
    terms = torch.where(target > 0, target * (log_p - log_q.masked_fill(~mask, 0.0)), torch.zeros_like(target))
    rows = mask.any(dim=-1)
    return terms.sum(dim=-1)[rows].mean() if rows.any() else scores.sum() * 0.0

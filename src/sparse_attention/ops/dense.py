"""Dense attention: the baseline every method is compared with, and the masked-dense oracle.

``dense_attention`` is ``torch.nn.functional.scaled_dot_product_attention`` with GQA and the
end-aligned causal convention of this package. ``masked_dense_attention`` materialises an
``N_q x N_k`` matrix from a selection; it exists for tests and small analyses only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .validation import causal_offset, check_qkv, resolve_scale


def _repeat_kv(t: Tensor, n_heads: int) -> Tensor:
    """``[B, H_kv, N, D] -> [B, H, N, D]`` by repeating each KV head ``H // H_kv`` times."""
    groups = n_heads // t.shape[1]
    return t if groups == 1 else t.repeat_interleave(groups, dim=1)


def causal_mask(n_q: int, n_k: int, device: torch.device | str | None = None) -> Tensor:
    """``[N_q, N_k]`` boolean mask, True where query ``i`` may see key ``j`` (end-aligned)."""
    rows = torch.arange(n_q, device=device)[:, None] + causal_offset(n_q, n_k)
    return torch.arange(n_k, device=device)[None, :] <= rows


def dense_attention(
    q: Tensor, k: Tensor, v: Tensor, *, causal: bool = True, scale: float | None = None
) -> Tensor:
    """Full softmax attention via SDPA. Shapes as in :func:`sparse_attention`.

    Returns ``[B, H, N_q, D_v]``.
    """
    check_qkv(q, k, v)
    scale = resolve_scale(scale, q.shape[-1])
    k, v = _repeat_kv(k, q.shape[1]), _repeat_kv(v, q.shape[1])
    n_q, n_k = q.shape[2], k.shape[2]
    if not causal:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    if n_q == n_k:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    if n_q > n_k:  # early queries see no key: SDPA would give NaN rows, the oracle gives 0
        return masked_dense_attention(q, k, v, causal_mask(n_q, n_k, q.device)[None, None].float(), scale=scale)
    mask = causal_mask(n_q, n_k, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def selection_counts(indices: Tensor, n_k: int, causal: bool) -> Tensor:
    """How often each key is listed among the valid slots of each query row.

    Args:
        indices: ``[B, H_sel, N_q, K]`` with ``-1`` for empty slots.
    Returns:
        ``[B, H_sel, N_q, N_k]`` float counts (0 where the key is not selected).
    """
    b, h_sel, n_q, _ = indices.shape
    idx = indices.long()
    valid = idx >= 0
    if causal:
        last_key = torch.arange(n_q, device=idx.device) + causal_offset(n_q, n_k)
        valid &= idx <= last_key[:, None]
    counts = torch.zeros(b, h_sel, n_q, n_k, device=idx.device)
    counts.scatter_add_(3, idx.clamp(min=0), valid.float())
    return counts


def masked_dense_attention(
    q: Tensor, k: Tensor, v: Tensor, counts: Tensor, *, scale: float | None = None
) -> Tensor:
    """Dense softmax where key ``j`` of row ``i`` has weight ``counts[..., i, j]``.

    ``softmax_j(s_ij + log c_ij)``: a key with count 0 is masked out, a key listed twice
    counts twice. Rows whose counts are all zero give zeros. ``counts`` broadcasts over
    heads (``[B, 1 | H_kv | H, N_q, N_k]``; ``H_kv`` heads map to groups of query heads).
    """
    h = q.shape[1]
    scale = resolve_scale(scale, q.shape[-1])
    out_dtype = q.dtype
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    q, k, v = q.to(compute), _repeat_kv(k, h).to(compute), _repeat_kv(v, h).to(compute)
    if counts.shape[1] not in (1, h):
        counts = _repeat_kv(counts, h)
    logits = (q @ k.transpose(-1, -2)) * scale + torch.log(counts.to(compute))  # log 0 = -inf
    row_max = logits.amax(dim=-1, keepdim=True).detach()
    row_max = torch.where(torch.isinf(row_max), torch.zeros_like(row_max), row_max)
    probs = torch.exp(logits - row_max)
    denom = probs.sum(dim=-1, keepdim=True)
    out = (probs @ v) / torch.where(denom > 0, denom, torch.ones_like(denom))
    return out.to(out_dtype)


def dense_probabilities(
    q: Tensor, k: Tensor, *, causal: bool, scale: float, query_slice: slice | None = None
) -> Tensor:
    """Dense attention probabilities ``[B, H, C, N_k]`` for the queries in ``query_slice``.

    Used to measure recall chunk by chunk without an ``N x N`` tensor.
    """
    h, n_q, n_k = q.shape[1], q.shape[2], k.shape[2]
    query_slice = query_slice or slice(0, n_q)
    qc = q[:, :, query_slice].float()
    logits = (qc @ _repeat_kv(k, h).float().transpose(-1, -2)) * scale
    if causal:
        rows = torch.arange(n_q, device=q.device)[query_slice]
        mask = torch.arange(n_k, device=q.device)[None, :] <= rows[:, None] + causal_offset(n_q, n_k)
        logits = logits.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.nan_to_num(probs, nan=0.0)

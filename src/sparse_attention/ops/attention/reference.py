"""Pure-PyTorch sparse attention: the oracle every fast kernel is tested against.

It runs on any device, supports autograd in ``q``, ``k`` and ``v``, and is chunked over
queries so that memory stays O(N_q * K * D), never O(N_q * N_k). Half-precision inputs are
computed in float32 and the output is cast back, so the oracle itself adds no rounding.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..validation import causal_offset, selection_head_map

#: Elements of gathered keys+values allowed per query chunk (~64 MiB in fp32).
DEFAULT_CHUNK_ELEMENTS = 1 << 24


def _chunk_size(n_q: int, per_query_elements: int, budget: int) -> int:
    return max(1, min(n_q, budget // max(1, per_query_elements)))


def sparse_attention_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    indices: Tensor,
    *,
    causal: bool,
    scale: float,
    query_chunk: int | None = None,
) -> Tensor:
    """Softmax attention of each query over exactly the keys listed in ``indices``.

    Args:
        q: ``[B, H, N_q, D]`` queries.
        k: ``[B, H_kv, N_k, D]`` keys, ``H % H_kv == 0``.
        v: ``[B, H_kv, N_k, D_v]`` values.
        indices: ``[B, H_sel, N_q, K]`` key positions, ``H_sel`` in {1, H_kv, H}; ``-1`` is
            an empty slot. Inputs are assumed validated (see ``ops.validation``).
        causal: ignore keys past the query position (end-aligned, see ``causal_offset``).
        scale: softmax scale applied to ``q . k``.
        query_chunk: queries per chunk; default keeps gathered tensors near 64 MiB.

    Returns:
        ``[B, H, N_q, D_v]`` in the dtype of ``q``. Rows with no valid key are zero.
        A key listed twice in a row is counted twice in the softmax.
    """
    out_dtype = q.dtype
    if q.dtype in (torch.float16, torch.bfloat16):
        q, k, v = q.float(), k.float(), v.float()
    b, h, n_q, d = q.shape
    h_kv, n_k, d_v = k.shape[1], k.shape[2], v.shape[3]
    g = h // h_kv
    n_slots = indices.shape[3]
    mode = selection_head_map(indices.shape[1], h, h_kv)

    # Arrange the selection as [B, H_kv, S, N_q, K]: S = G for per-head selections, else 1
    # (a shared or per-KV-head selection gathers each key once for all G query heads).
    idx = indices.long()
    if mode == "shared":
        idx = idx.expand(b, h_kv, n_q, n_slots).unsqueeze(2)
    elif mode == "per_kv_head":
        idx = idx.unsqueeze(2)
    else:
        idx = idx.reshape(b, h_kv, g, n_q, n_slots)
    s_heads = idx.shape[2]
    q_grouped = q.reshape(b, h_kv, g, n_q, d)  # [B, H_kv, G, N_q, D]

    per_query = b * h_kv * s_heads * n_slots * (d + d_v) + b * h * n_slots * 3
    chunk = query_chunk or _chunk_size(n_q, per_query, DEFAULT_CHUNK_ELEMENTS)
    offset = causal_offset(n_q, n_k)

    outputs = []
    for start in range(0, n_q, chunk):
        stop = min(start + chunk, n_q)
        c = stop - start
        idx_c = idx[:, :, :, start:stop]  # [B, H_kv, S, C, K]
        valid = idx_c >= 0
        if causal:
            last_key = torch.arange(start, stop, device=q.device) + offset  # [C]
            valid = valid & (idx_c <= last_key[:, None])
        safe = torch.where(valid, idx_c, torch.zeros_like(idx_c)).reshape(b, h_kv, -1, 1)
        k_sel = torch.gather(k, 2, safe.expand(-1, -1, -1, d)).reshape(b, h_kv, s_heads, c, n_slots, d)
        v_sel = torch.gather(v, 2, safe.expand(-1, -1, -1, d_v)).reshape(b, h_kv, s_heads, c, n_slots, d_v)
        # Invalid slots read key 0 as a stand-in; zero its values there, or a NaN/Inf in value 0 would
        # reach every row with an empty slot through 0 * NaN (a NaN key 0 is masked out with its score).
        v_sel = v_sel.masked_fill(~valid.unsqueeze(-1), 0.0)

        q_c = q_grouped[:, :, :, start:stop].unsqueeze(-2)  # [B, H_kv, G, C, 1, D]
        scores = (q_c @ k_sel.transpose(-1, -2)).squeeze(-2) * scale  # [B, H_kv, G, C, K]
        scores = scores.masked_fill(~valid, float("-inf"))
        # The max is only for stability; detaching it leaves softmax gradients unchanged.
        row_max = scores.amax(dim=-1, keepdim=True).detach()
        row_max = torch.where(torch.isinf(row_max), torch.zeros_like(row_max), row_max)
        probs = torch.exp(scores - row_max)  # exactly 0 on invalid slots
        denom = probs.sum(dim=-1, keepdim=True)
        out_c = (probs.unsqueeze(-2) @ v_sel).squeeze(-2)  # [B, H_kv, G, C, D_v]
        # A row without a valid key has probs == 0 and denom == 0: output and gradients 0.
        out_c = out_c / torch.where(denom > 0, denom, torch.ones_like(denom))
        outputs.append(out_c.reshape(b, h, c, d_v))
    return torch.cat(outputs, dim=2).to(out_dtype)

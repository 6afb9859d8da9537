"""Lightning-indexer logits at the selected keys only, in O(N K) memory, with their backward.

DSA's sparse stage trains the indexer by a KL over the selected set ``S_t`` only, so it needs
``I[t, s] = sum_j w[t, j] * ReLU(q_I[t, j] . k_I[s])`` for ``s`` in ``S_t``: ``[B, N, K]``
numbers, not the ``[B, N, N]`` score matrix. :func:`selected_indexer_scores` computes them per
chunk of queries (gathering that chunk's ``[B, C, K, D_I]`` keys only) and its backward
recomputes each chunk, writing ``dq_I`` and ``dw`` directly and scatter-adding ``dk_I`` into
the selected keys, so neither pass ever holds ``[B, N, K, D_I]`` at once.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Gathered key elements (``B * C * K * D_I``) per query chunk, 8 MiB in float32: small next to
#: the rest of a training step, large enough for the per-chunk einsums to run at full speed.
CHUNK_ELEMENTS = 1 << 21


def _chunk(batch: int, top_k: int, head_dim: int, query_chunk: int | None) -> int:
    return query_chunk or max(1, CHUNK_ELEMENTS // max(1, batch * top_k * head_dim))


def gather_rows(table: Tensor, indices: Tensor) -> Tensor:
    """``table [B, N, D]`` at ``indices [B, ...]`` (-1 read as row 0) -> ``[B, ..., D]``.

    One ``index_select`` over the flattened table: whole rows copied, much faster on CPU than
    ``gather`` with an index expanded over ``D``.
    """
    b, n, d = table.shape
    flat = (indices.clamp(min=0) + torch.arange(b, device=indices.device).view(b, *[1] * (indices.dim() - 1)) * n)
    return table.reshape(b * n, d).index_select(0, flat.reshape(-1)).view(*indices.shape, d)


def scatter_add_rows(table: Tensor, indices: Tensor, rows: Tensor) -> None:
    """``table[b, indices[b, ...]] += rows[b, ...]`` in place (``index_add_``; -1 goes to row 0,
    so the caller zeroes those rows). table: ``[B, N, D]``; rows: ``[B, ..., D]``."""
    b, n, d = table.shape
    flat = (indices.clamp(min=0) + torch.arange(b, device=indices.device).view(b, *[1] * (indices.dim() - 1)) * n)
    table.view(b * n, d).index_add_(0, flat.reshape(-1), rows.reshape(-1, d))


class _SelectedScores(torch.autograd.Function):
    @staticmethod
    def forward(ctx, index_q: Tensor, index_k: Tensor, weights: Tensor, indices: Tensor, chunk: int) -> Tensor:
        b, h_i, n_q, d_i = index_q.shape
        out = index_q.new_zeros(b, n_q, indices.shape[-1])
        for start in range(0, n_q, chunk):
            rows = slice(start, min(start + chunk, n_q))
            keys = gather_rows(index_k, indices[:, rows])  # [B, C, K, D_I]
            dots = torch.einsum("bhcd,bckd->bchk", index_q[:, :, rows], keys)  # [B, C, H_I, K]
            out[:, rows] = torch.einsum("bch,bchk->bck", weights[:, rows], dots.relu())
        ctx.save_for_backward(index_q, index_k, weights, indices)
        ctx.chunk = chunk
        return out.masked_fill(indices < 0, 0.0)

    @staticmethod
    def backward(ctx, grad: Tensor):
        index_q, index_k, weights, indices = ctx.saved_tensors
        n_q = index_q.shape[2]
        grad = grad.masked_fill(indices < 0, 0.0)  # empty slots carry no gradient
        dq, dk, dw = torch.zeros_like(index_q), torch.zeros_like(index_k), torch.zeros_like(weights)
        for start in range(0, n_q, ctx.chunk):
            rows = slice(start, min(start + ctx.chunk, n_q))
            idx = indices[:, rows]  # [B, C, K]
            keys = gather_rows(index_k, idx)  # [B, C, K, D_I]
            q = index_q[:, :, rows]  # [B, H_I, C, D_I]
            dots = torch.einsum("bhcd,bckd->bchk", q, keys)  # [B, C, H_I, K]
            g = grad[:, rows]  # [B, C, K]
            dw[:, rows] = torch.einsum("bck,bchk->bch", g, dots.relu())
            d_dots = torch.einsum("bck,bch->bchk", g, weights[:, rows]) * (dots > 0)  # ReLU'
            dq[:, :, rows] = torch.einsum("bchk,bckd->bhcd", d_dots, keys)
            d_keys = torch.einsum("bchk,bhcd->bckd", d_dots, q)  # [B, C, K, D_I]
            scatter_add_rows(dk, idx, d_keys)  # empty slots add zeros (their grad was masked)
        return dq, dk, dw, None, None


def selected_indexer_scores(index_q: Tensor, index_k: Tensor, weights: Tensor, indices: Tensor, *,
                            query_chunk: int | None = None) -> Tensor:
    """Indexer logits at the selected keys, differentiable in ``index_q``, ``index_k``, ``weights``.

    Args:
        index_q: ``[B, H_I, N_q, D_I]``; index_k: ``[B, N_k, D_I]``; weights: ``[B, N_q, H_I]``
            (as :class:`~sparse_attention.layers.indexer.LightningIndexer` returns them).
        indices: ``[B, N_q, K]`` selected key positions, ``-1`` = empty slot.
        query_chunk: queries per chunk (default: gathered keys of about 8 MiB).
    Returns:
        ``[B, N_q, K]``: ``sum_j w[t, j] ReLU(q_I[t, j] . k_I[indices[t, s]])``, 0 at empty slots
        (the caller masks them), equal to the full score matrix gathered at ``indices``.
    """
    if indices.dim() != 3 or indices.shape[:2] != (index_q.shape[0], index_q.shape[2]):
        raise ValueError(f"indices must be [B, N_q, K] = [{index_q.shape[0]}, {index_q.shape[2]}, K], got"
                         f" {tuple(indices.shape)}")
    if indices.dtype != torch.long:
        raise TypeError(f"indices must be int64, got {indices.dtype}")
    chunk = _chunk(index_q.shape[0], indices.shape[-1], index_q.shape[-1], query_chunk)
    return _SelectedScores.apply(index_q, index_k, weights, indices, chunk)

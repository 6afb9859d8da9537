"""Statistics of a selection: edges, sparsity, distance, and recall of dense attention mass.

All statistics are computed from the selection itself (and, for recall, from ``q``/``k``),
chunk by chunk over queries, so they never need an ``N x N`` tensor in memory at once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from ..ops.dense import dense_probabilities
from ..ops.validation import causal_offset, check_indices, resolve_scale
from .base import Selection

_CHUNK_ELEMENTS = 1 << 24


@dataclass
class SelectionStats:
    """Summary of which keys a selection lets queries see.

    Attributes (edges are counted per attention matrix: averaged over batch and heads):
        n_queries, n_keys, slots: ``N_q``, ``N_k`` and ``K``.
        edges: valid (query, key) pairs, i.e. non-empty, in range and causally visible.
        edges_per_query: ``edges / N_q``; ``min_edges_per_query``/``max_...`` over rows.
        sparsity: ``1 - edges / (N_q * N_k)``.
        causal_sparsity: ``1 - edges / causal_budget`` (the pairs dense causal attention
            computes; equals ``sparsity`` when not causal).
        empty_rows: fraction of query rows with no valid key.
        mean_distance: mean ``|query position - key position|`` over edges.
        attention_recall: mean over queries and heads of the dense attention probability
            mass on the selected keys (1.0 for dense); None unless ``q``/``k`` were given.
    """

    n_queries: int
    n_keys: int
    slots: int
    edges: float
    edges_per_query: float
    min_edges_per_query: int
    max_edges_per_query: int
    sparsity: float
    causal_sparsity: float
    empty_rows: float
    mean_distance: float
    attention_recall: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _valid_mask(idx: Tensor, n_q: int, n_k: int, causal: bool, rows: slice) -> tuple[Tensor, Tensor]:
    """``valid [..., C, K]`` and query positions ``[C]`` (in key coordinates) for ``rows``."""
    positions = torch.arange(n_q, device=idx.device)[rows] + causal_offset(n_q, n_k)
    valid = (idx >= 0) & (idx < n_k)
    if causal:
        valid &= idx <= positions[:, None]
    return valid, positions


def causal_budget(n_q: int, n_k: int) -> int:
    """Number of (query, key) pairs causal dense attention computes."""
    last = torch.arange(n_q) + causal_offset(n_q, n_k)
    return int((last + 1).clamp(0, n_k).sum())


def selection_stats(selection: Selection, q: Tensor | None = None, k: Tensor | None = None,
                    *, scale: float | None = None) -> SelectionStats:
    """Statistics of ``selection``; pass ``q [B, H, N_q, D]`` and ``k [B, H_kv, N_k, D]`` for recall."""
    idx = selection.indices.long()  # [B, H_sel, N_q, K]
    b, h_sel, n_q, slots = idx.shape
    n_k, causal = selection.n_keys, selection.causal
    chunk = max(1, _CHUNK_ELEMENTS // max(1, b * h_sel * slots))
    counts, distance_sum = [], 0.0
    for start in range(0, n_q, chunk):
        rows = slice(start, min(start + chunk, n_q))
        valid, positions = _valid_mask(idx[:, :, rows], n_q, n_k, causal, rows)
        counts.append(valid.sum(-1))  # [B, H_sel, C]
        distance = (positions[:, None] - idx[:, :, rows]).abs().float()
        distance_sum += float((distance * valid).sum())
    per_row = torch.cat(counts, dim=-1).float()  # [B, H_sel, N_q]
    edges = float(per_row.sum()) / (b * h_sel)
    full = n_q * n_k
    budget = causal_budget(n_q, n_k) if causal else full
    recall = attention_recall(selection, q, k, scale=scale) if q is not None and k is not None else None
    return SelectionStats(
        n_queries=n_q, n_keys=n_k, slots=slots, edges=edges, edges_per_query=edges / n_q,
        min_edges_per_query=int(per_row.min()), max_edges_per_query=int(per_row.max()),
        sparsity=1.0 - edges / full, causal_sparsity=1.0 - edges / budget if budget else 0.0,
        empty_rows=float((per_row == 0).float().mean()),
        mean_distance=distance_sum / max(1.0, float(per_row.sum())), attention_recall=recall,
    )


def attention_recall(selection: Selection, q: Tensor, k: Tensor, *, scale: float | None = None,
                     per_query: bool = False) -> float | Tensor:
    """Dense attention probability mass that falls on the selected keys.

    Args:
        selection: indices ``[B, H_sel, N_q, K]``.
        q: ``[B, H, N_q, D]``; k: ``[B, H_kv, N_k, D]``.
        per_query: return the ``[B, H, N_q]`` recall tensor instead of its mean.
    Duplicated indices count once. Query rows that see no key under dense attention count 1.
    """
    check_indices(selection.indices, q, k)
    scale = resolve_scale(scale, q.shape[-1])
    idx = selection.indices.long()
    b, h, n_q, _ = q.shape
    h_kv, n_k = k.shape[1], k.shape[2]
    if idx.shape[1] == h_kv and h_kv != h:
        idx = idx.repeat_interleave(h // h_kv, dim=1)
    idx = idx.expand(b, h, n_q, idx.shape[-1])  # [B, H, N_q, K]
    chunk = max(1, _CHUNK_ELEMENTS // max(1, b * h * n_k))
    parts = []
    for start in range(0, n_q, chunk):
        rows = slice(start, min(start + chunk, n_q))
        probs = dense_probabilities(q, k, causal=selection.causal, scale=scale, query_slice=rows)  # [B, H, C, N_k]
        valid, _ = _valid_mask(idx[:, :, rows], n_q, n_k, selection.causal, rows)
        hits = torch.zeros_like(probs).scatter_add_(-1, idx[:, :, rows].clamp(min=0), valid.float()) > 0
        mass = (probs * hits).sum(-1)
        no_keys = probs.sum(-1) == 0  # e.g. an early query when N_q > N_k
        parts.append(torch.where(no_keys, torch.ones_like(mass), mass))
    recall = torch.cat(parts, dim=-1)
    return recall if per_query else float(recall.mean())

"""Statistics of an attention layer's selection, measured against its dense attention."""

from __future__ import annotations

import torch
from torch import Tensor

from ..selection.base import Selection
from ..ops.topk import indexer_scores
from ..selection.stats import attention_recall, selection_stats
from .indexer_loss import causal_rows, dense_target_rows, kl_to_indexer, query_chunks


def topk_from_scores(scores: Tensor, top_k: int) -> Tensor:
    """``scores [B, N, N]`` (masked keys -inf) -> ``indices [B, N, K]`` with -1 for masked slots."""
    k_eff = min(top_k, scores.shape[-1])
    values, idx = scores.topk(k_eff, dim=-1, sorted=False)
    return torch.where(values == float("-inf"), torch.full_like(idx, -1), idx)


def coverage(indices: Tensor, n_k: int) -> float:
    """Mean share of key positions selected by at least one query. ``indices [B, 1, N, K]``."""
    b = indices.shape[0]
    flat = indices.reshape(b, -1)
    hit = torch.zeros(b, n_k + 1, dtype=torch.bool, device=indices.device)
    hit.scatter_(1, torch.where(flat >= 0, flat, n_k), True)
    return hit[:, :n_k].float().mean().item()


@torch.no_grad()
def indexer_dense_stats(q: Tensor, k: Tensor, index_q: Tensor, index_k: Tensor, weights: Tensor, top_k: int,
                        ) -> tuple[dict, Tensor, Tensor]:
    """Statistics that compare the indexer with the dense attention, by query chunks (never an
    ``[B, N, N]`` tensor): ``indexer_kl`` (the warm-up loss) and ``oracle_recall``.

    Returns ``(stats, oracle [B, N, K], indexer_top_k [B, N, K])``: the top-k of the head-summed
    dense attention (the best any selection shared by all heads can reach) and of the indexer scores.
    """
    b, h, n, _ = q.shape
    kl_sum, oracle_parts, own_parts = 0.0, [], []
    for rows in query_chunks(n, b * max(h, 2) * n):
        target = dense_target_rows(q, k, rows)  # [B, C, N]
        visible = causal_rows(rows, n, q.device).expand_as(target)
        scores = indexer_scores(index_q, index_k, weights, query_slice=rows).float().masked_fill(~visible,
                                                                                              float("-inf"))
        kl_sum += kl_to_indexer(target, scores, visible).item() * b * (rows.stop - rows.start)
        oracle_parts.append(topk_from_scores(target.masked_fill(~visible, float("-inf")), top_k))
        own_parts.append(topk_from_scores(scores, top_k))
    oracle = torch.cat(oracle_parts, dim=1)
    stats = {"indexer_kl": kl_sum / (b * n),
             "oracle_recall": float(attention_recall(Selection(oracle[:, None], n, True, "oracle", {"top_k": top_k}),
                                                     q, k))}
    return stats, oracle, torch.cat(own_parts, dim=1)


@torch.no_grad()
def layer_stats(q: Tensor, k: Tensor, indexer_outputs: tuple[Tensor, Tensor, Tensor] | None,
                selection: Selection | None, top_k: int) -> dict:
    """Sparsity, dense-mass recall, KL, coverage and distance of the selection this layer
    uses (``sparse`` mode) or would use (the indexer's top-k in the other modes), in O(N * chunk)
    memory.

    Args:
        q: ``[B, H, N, D]``; k: ``[B, H_kv, N, D]``.
        indexer_outputs: ``(index_q, index_k, weights)`` of a DSA layer, or None.
        selection: the selection used, or None.
        top_k: keys per query of the oracle (and of the indexer's own top-k).
    """
    n = q.shape[2]
    stats: dict = {}
    if indexer_outputs is not None:
        stats, _, indexer_top_k = indexer_dense_stats(q, k, *indexer_outputs, top_k)
        if selection is None:
            selection = Selection(indexer_top_k[:, None], n, True, "dsa", {"top_k": top_k})
    if selection is None:
        return stats
    summary = selection_stats(selection)
    stats["sparsity"] = summary.causal_sparsity
    stats["mean_distance"] = summary.mean_distance
    stats["coverage"] = coverage(selection.indices, n)
    stats["recall"] = float(attention_recall(selection, q, k))
    return stats

"""Statistics of an attention layer's selection, measured against its dense attention."""

from __future__ import annotations

import torch
from torch import Tensor

from ..ops.dense import causal_mask
from ..selection.base import Selection
from ..selection.stats import attention_recall, selection_stats
from .indexer_loss import dense_attention_target, kl_to_indexer


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
def layer_stats(q: Tensor, k: Tensor, scores: Tensor | None, selection: Selection | None, top_k: int) -> dict:
    """Sparsity, dense-mass recall, KL, coverage and distance of the selection this layer
    uses (``sparse`` mode) or would use (the indexer's top-k in the other modes)."""
    n = q.shape[2]
    stats: dict = {}
    if scores is not None:
        target = dense_attention_target(q, k)
        visible = causal_mask(n, n, q.device).expand_as(scores)
        stats["indexer_kl"] = kl_to_indexer(target, scores, visible).item()
        # The best any selection shared by all heads can do: top-k of the head-summed attention.
        oracle = topk_from_scores(target.masked_fill(~visible, float("-inf")), top_k)
        stats["oracle_recall"] = float(attention_recall(
            Selection(oracle[:, None], n, True, "oracle", {"top_k": top_k}), q, k))
        if selection is None:
            indices = topk_from_scores(scores, top_k)
            selection = Selection(indices[:, None], n, True, "dsa", {"top_k": top_k})
    if selection is None:
        return stats
    summary = selection_stats(selection)
    stats["sparsity"] = summary.causal_sparsity
    stats["mean_distance"] = summary.mean_distance
    stats["coverage"] = coverage(selection.indices, n)
    stats["recall"] = float(attention_recall(selection, q, k))
    return stats

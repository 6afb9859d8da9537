"""Scored top-k: for each query the ``K`` keys of highest (indexer) score, without an N x N matrix.

``reference.py`` (the score formula, written once, and the chunked top-k: the oracle),
``cpu.py`` + ``csrc/`` (fused C++ scoring + top-k), ``implementations.py`` (what each supports).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .cpu import PRECISIONS
from .implementations import TOPK
from .reference import chunked_topk, indexer_scores, weighted_scores


def scored_topk(q: Tensor, k: Tensor, weights: Tensor | None, *, top_k: int, causal: bool, relu: bool,
                group: int = 1, precision: str = "float32", key_mask: Tensor | None = None,
                scoring: str = "auto") -> tuple[Tensor, str]:
    """Top-k keys per (row, query) by the scores of :func:`weighted_scores`.

    Args:
        q: ``[R, J, N_q, D]`` queries of ``J`` heads whose scores are summed per row.
        k: ``[R // group, N_k, D]`` keys; row ``r`` scores against key row ``r // group``.
        weights: ``[R, N_q, J]`` per-query head weights, or None for all ones.
        top_k: keys kept per query, ``K = min(top_k, N_k)``.
        causal: query ``t`` sees keys ``<= t + N_k - N_q``.
        relu: ReLU on each head's dot product before weighting (the lightning indexer).
        precision: ``"float32"``, or ``"bfloat16"`` (inputs rounded to bf16, products summed in fp32).
        key_mask: optional ``[R // group, N_k]`` bool, False = padding (never selected).
        scoring: ``"auto"``, ``"fused"`` (CPU kernel) or ``"chunked"`` (the reference; see :data:`TOPK`).
    Returns:
        ``[R, N_q, K]`` int64 positions in no particular order, ``-1`` in slots a query cannot
        fill; and the name of the implementation that ran.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    chosen = TOPK.choose(scoring, q, k, weights, precision=precision, key_mask=key_mask)
    with torch.no_grad():  # a selection is discrete: no gradient flows through it
        idx = chosen.run(q, k, weights, top_k=top_k, causal=causal, relu=relu, group=group, precision=precision,
                         key_mask=key_mask)
    return idx, chosen.name



__all__ = ["PRECISIONS", "TOPK", "chunked_topk", "indexer_scores", "scored_topk", "weighted_scores"]

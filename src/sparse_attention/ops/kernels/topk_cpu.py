"""Fused scoring + top-k selection on CPU (``fused_topk`` of the C++ extension).

Scores ``I[t, s] = sum_j w[t, j] * f(q[j, t] . k[s])`` (``f`` = ReLU for the lightning
indexer, identity for exact top-k) are never materialised: the kernel walks keys in panels
of 64, keeps each query's best ``K`` with a running threshold, and returns the indices, so
memory is O(N_q * K) instead of O(N_q * N_k). See ``csrc/indexer_topk_cpu.cpp``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import cpu

#: input dtypes the kernel scores exactly (converted to float32 without rounding).
EXACT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def unsupported_reason(*tensors: Tensor) -> str | None:
    """None when :func:`fused_topk` can run on these tensors, else why not."""
    for t in tensors:
        if t.device.type != "cpu":
            return f"the fused top-k kernel runs on CPU tensors only, got {t.device.type}"
        if t.dtype not in EXACT_DTYPES:
            return f"the fused top-k kernel scores in float32; dtype {t.dtype} would lose precision"
    return cpu.load_error()


def fused_topk(q: Tensor, k: Tensor, weights: Tensor | None, *, top_k: int, causal: bool, relu: bool,
               group: int = 1) -> Tensor:
    """Top-k keys per (row, query) by fused scoring.

    Args:
        q: ``[R, J, N_q, D]`` queries of ``J`` heads whose scores are summed per row.
        k: ``[R // group, N_k, D]`` keys; row ``r`` scores against key row ``r // group``.
        weights: ``[R, N_q, J]`` per-query head weights, or None for all ones.
        top_k: keys kept per query, ``K = min(top_k, N_k)``.
        causal: query ``t`` sees keys ``<= t + N_k - N_q``.
        relu: apply ReLU to each head's dot product before weighting (lightning indexer).
    Returns:
        ``[R, N_q, K]`` int64 positions in no particular order, ``-1`` in slots a query
        cannot fill (fewer visible keys). Ties at the K-th score keep the earlier key; NaN
        scores are never selected.
    """
    w = torch.empty(0) if weights is None else weights.float().contiguous()
    return cpu.extension().fused_topk(q.float().contiguous(), k.float().contiguous(), w, int(top_k), bool(causal),
                                      bool(relu), int(group), False)

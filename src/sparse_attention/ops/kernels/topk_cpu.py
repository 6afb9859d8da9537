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
#: arithmetic of the scores: exact fp32 products, or bf16-rounded inputs with fp32 sums.
PRECISIONS = ("float32", "bfloat16")


def bf16_path() -> str:
    """How bfloat16 scoring runs here: ``"amx"`` (tile unit), ``"avx512_bf16"`` or ``""`` (cannot)."""
    return cpu.extension().fused_topk_bf16_path() if cpu.load_error() is None else ""


def unsupported_reason(*tensors: Tensor, precision: str = "float32") -> str | None:
    """None when :func:`fused_topk` can run on these tensors at ``precision``, else why not."""
    for t in tensors:
        if t.device.type != "cpu":
            return f"the fused top-k kernel runs on CPU tensors only, got {t.device.type}"
        if t.dtype not in EXACT_DTYPES:
            return f"the fused top-k kernel scores in float32; dtype {t.dtype} would lose precision"
    if cpu.load_error() is not None:
        return cpu.load_error()
    if precision == "bfloat16" and not bf16_path():
        return "bfloat16 scoring needs a CPU with AMX-BF16 or AVX512-BF16 (and a compiler that targets it)"
    return None


def fused_topk(q: Tensor, k: Tensor, weights: Tensor | None, *, top_k: int, causal: bool, relu: bool,
               group: int = 1, precision: str = "float32", _avoid_amx: bool = False) -> Tensor:
    """Top-k keys per (row, query) by fused scoring.

    Args:
        q: ``[R, J, N_q, D]`` queries of ``J`` heads whose scores are summed per row.
        k: ``[R // group, N_k, D]`` keys; row ``r`` scores against key row ``r // group``.
        weights: ``[R, N_q, J]`` per-query head weights, or None for all ones.
        top_k: keys kept per query, ``K = min(top_k, N_k)``.
        causal: query ``t`` sees keys ``<= t + N_k - N_q``.
        relu: apply ReLU to each head's dot product before weighting (lightning indexer).
        precision: ``"float32"`` (exact fp32 products) or ``"bfloat16"``: q and k rounded to
            bf16, products accumulated in fp32, on AMX tiles where available (~2-4x faster;
            DeepSeek-V3.2 runs its indexer in FP8 for the same reason).
    Returns:
        ``[R, N_q, K]`` int64 positions in no particular order, ``-1`` in slots a query
        cannot fill (fewer visible keys). Ties at the K-th score keep the earlier key; NaN
        scores are never selected.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    w = torch.empty(0) if weights is None else weights.float().contiguous()
    mode = 0 if precision == "float32" else 2 if _avoid_amx else 1  # _avoid_amx: tests of the AVX512-BF16 path
    return cpu.extension().fused_topk(q.float().contiguous(), k.float().contiguous(), w, int(top_k), bool(causal),
                                      bool(relu), int(group), mode)

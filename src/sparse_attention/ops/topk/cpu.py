"""Fused scoring + top-k selection on CPU (``fused_topk`` of the C++ extension).

Scores ``I[t, s] = sum_j w[t, j] * f(q[j, t] . k[s])`` (``f`` = ReLU for the lightning
indexer, identity for exact top-k) are never materialised: the kernel walks keys in panels
of 64, keeps each query's best ``K`` with a running threshold, and returns the indices, so
memory is O(N_q * K) instead of O(N_q * N_k). See ``csrc/topk_cpu.cpp``; the scores it must
rank as :func:`.reference.weighted_scores` does.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..cpp.build import CppExtension

EXTENSION = CppExtension("topk", Path(__file__).with_name("csrc"))

#: input dtypes the kernel scores exactly (converted to float32 without rounding).
EXACT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
#: arithmetic of the scores: exact fp32 products, or bf16-rounded inputs with fp32 sums.
PRECISIONS = ("float32", "bfloat16")


#: bf16 scoring on a CPU without bf16 dot-product instructions: the inputs are rounded to bf16
#: and scored by the fp32 kernel. Products of two bf16 values are exact in fp32, so this computes
#: the same products as AMX / AVX512-BF16 and differs from them only in the order of the fp32
#: sums; it is about as fast as float32 scoring (no speed-up), which is what the name says.
BF16_EMULATION = "fp32_on_bf16_inputs"


def bf16_path(isa: str | None = None) -> str:
    """How bfloat16 scoring runs here: ``"amx"`` (tile unit), ``"avx512_bf16"``,
    :data:`BF16_EMULATION` (fp32 kernel on rounded inputs), or ``""`` (no extension)."""
    ext = EXTENSION.module(isa)
    return "" if ext is None else ext.fused_topk_bf16_path() or BF16_EMULATION


def supports(q: Tensor, k: Tensor, weights: Tensor | None, *, precision: str = "float32",
             key_mask: Tensor | None = None) -> str | None:
    """None when :func:`fused_topk` can run these inputs, else why not (every CPU runs both
    precisions: see :data:`BF16_EMULATION`)."""
    for t in (q, k) if weights is None else (q, k, weights):
        if t.device.type != "cpu":
            return f"runs on CPU tensors only, got {t.device.type}"
        if t.dtype not in EXACT_DTYPES:
            return f"scores in float32; dtype {t.dtype} would lose precision"
    if key_mask is not None:
        return "takes no key_mask (padded keys score -inf in the reference's chunked scoring)"
    return None


def fused_topk(q: Tensor, k: Tensor, weights: Tensor | None, *, top_k: int, causal: bool, relu: bool,
               group: int = 1, precision: str = "float32", key_mask: Tensor | None = None,
               isa: str | None = None, _avoid_amx: bool = False) -> Tensor:
    """Top-k keys per (row, query) by fused scoring: :func:`sparse_attention.ops.topk.scored_topk`
    (arguments and result as there, without its ``scoring``) in one C++ pass.

    Args:
        precision: ``"float32"`` (exact fp32 products) or ``"bfloat16"``: q and k rounded to
            bf16, products accumulated in fp32, on AMX tiles or AVX512-BF16 where available
            (~2-4x faster; DeepSeek-V3.2 runs its indexer in FP8 for the same reason); on
            other CPUs the fp32 kernel scores the rounded inputs (:data:`BF16_EMULATION`:
            the same products, not faster).
        key_mask: must be None (see :func:`supports`).
        isa: the kernel build to run (``ISA_LEVELS``; default the session's level).
    Returns:
        ``[R, N_q, K]`` int64 positions in no particular order, ``-1`` in slots a query
        cannot fill (fewer visible keys). Ties at the K-th score keep the earlier key; a NaN
        score ranks above every number (as in ``torch.topk``).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if key_mask is not None:
        raise ValueError("the fused top-k kernel takes no key_mask")
    ext = EXTENSION.require(isa)
    w = torch.empty(0) if weights is None else weights.float().contiguous()
    mode = 0 if precision == "float32" else 2 if _avoid_amx else 1  # _avoid_amx: tests of the AVX512-BF16 path
    if mode != 0 and not ext.fused_topk_bf16_path():
        q, k, mode = q.bfloat16(), k.bfloat16(), 0  # BF16_EMULATION: exact products of the rounded inputs
    return ext.fused_topk(q.float().contiguous(), k.float().contiguous(), w, int(top_k), bool(causal),
                          bool(relu), int(group), mode)

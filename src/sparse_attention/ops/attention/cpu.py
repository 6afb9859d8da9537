"""Sparse attention on CPU: the C++ kernel of ``csrc/attention_cpu.cpp``.

Per query token and KV group it computes the small GEMMs ``Q_g K_sel^T`` and ``P V_sel`` over the
gathered keys (one gather serves every query head that shares the selection), with a fused
softmax; the backward pass recomputes the probabilities from the saved log-sum-exp. bf16 forward
passes of groups of up to 16 heads with D and D_v multiples of 32 run on the AMX tile unit where
the CPU has one (``amx_attention.h``: products of bf16 values accumulated in fp32, the
probabilities rounded to bf16 for ``P V``, as SDPA's bf16 CPU kernel does); everything else
computes in fp32. The lane kernels (``lanes*.h``) run on AVX-512 or AVX2 + FMA (``simd16.h``); a
build without FMA runs portable loops. Built per instruction-set level by
:class:`~sparse_attention.ops.cpp.build.CppExtension`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..cpp.build import REPORTED_CPU_FLAGS, CppExtension, compile_flags, cpu_flags, isa_level
from ..dispatch import Fallback

EXTENSION = CppExtension("attention", Path(__file__).with_name("csrc"))

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16)


def load_error(isa: str | None = None) -> str | None:
    """Why the kernel for ``isa`` (default the session's level) is unavailable, None when it loaded."""
    return EXTENSION.load_error(isa)


def build_info(isa: str | None = None) -> dict:
    """What the kernel was built for and what the CPU offers, for result files.

    Returns ``{"isa_level", "compile_flags", "compiled_features", "cpu_flags", "amx_attention"}``;
    ``compiled_features`` lists the instruction sets the build's code may use (empty when it
    did not load, with ``"load_error"`` saying why).
    """
    level = isa_level() if isa is None else isa
    ext = EXTENSION.module(level)
    flags = cpu_flags()
    info = {
        "isa_level": level,
        "compile_flags": compile_flags(level),
        "compiled_features": list(ext.compiled_features()) if ext is not None else [],
        "cpu_flags": [f for f in REPORTED_CPU_FLAGS if f in flags],
        "amx_attention": bool(ext is not None and ext.amx_attention_available()),
    }
    if ext is None:
        info["load_error"] = EXTENSION.load_error(level)
    return info


def amx_attention_available(isa: str | None = None) -> bool:
    """Whether bf16 attention runs on AMX tiles here (a CPU with AMX-BF16 that the OS lets use)."""
    ext = EXTENSION.module(isa)
    return bool(ext is not None and ext.amx_attention_available())


def _saved_indices(indices: Tensor, n_keys: int) -> Tensor:
    """``indices`` in the narrowest integer type that holds every key position and -1: int16 up to
    2**15 keys (a quarter of int64's bytes), int32 up to 2**31, else as they are."""
    if n_keys <= 2**15:
        return indices.to(torch.int16)
    return indices.int() if n_keys < 2**31 else indices


class _SparseAttentionCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, indices, causal, scale, ext, head_mean=False):
        if head_mean:  # also the mean over heads of the probabilities per slot (not differentiable)
            out, lse, target = ext.forward_with_head_mean(q, k, v, indices, causal, scale)
            ctx.mark_non_differentiable(target)
        else:
            out, lse = ext.forward(q, k, v, indices, causal, scale)
        # Kept as int16 or int32, which the backward kernel reads as it is: the selection is the
        # largest tensor a sparse layer saves beyond dense attention's (N x K per selection head).
        # The output is stored token-major (csrc: Shapes), so the output projection's input that
        # the layer makes of it is a view, and autograd holds one tensor for both.
        if any(ctx.needs_input_grad[:3]):  # (no int32 copy of the selection for a forward without gradients)
            ctx.save_for_backward(q, k, v, _saved_indices(indices, k.shape[2]), out, lse)
        ctx.causal, ctx.scale, ctx.ext = causal, scale, ext
        return (out, target) if head_mean else out

    @staticmethod
    def backward(ctx, grad_out, *_unused):  # _unused: the target's (None) with head_mean
        q, k, v, indices, out, lse = ctx.saved_tensors
        dq, dk, dv = ctx.ext.backward(q, k, v, indices, ctx.causal, ctx.scale, out, lse, grad_out)
        return dq, dk, dv, None, None, None, None, None


def sparse_attention_cpu(q: Tensor, k: Tensor, v: Tensor, indices: Tensor, *, causal: bool, scale: float,
                         isa: str | None = None) -> Tensor:
    """Same contract as the reference kernel; inputs are made contiguous and indices int64.

    ``isa``: the build to run (``ISA_LEVELS``; default the session's level), for tests and
    benchmarks of one level on a machine that has several.

    The output ``[B, H, N_q, D_v]`` is stored token-major (``out.transpose(1, 2)`` is
    contiguous), so that ``out.transpose(1, 2).reshape(B, N_q, H * D_v)`` is a view.
    """
    ext = EXTENSION.require(isa)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    return _SparseAttentionCPU.apply(q, k, v, indices.long().contiguous(), causal, float(scale), ext)


def sparse_attention_cpu_with_head_mean(q: Tensor, k: Tensor, v: Tensor, indices: Tensor, *, causal: bool,
                                        scale: float, isa: str | None = None) -> tuple[Tensor, Tensor | None]:
    """:func:`sparse_attention_cpu` that also returns, for a selection shared by every head
    (``indices [B, 1, N_q, K]``), the mean over the ``H`` heads of each head's attention
    probabilities per slot, ``[B, N_q, K]`` float32 (zero on empty and causally hidden slots;
    not differentiable): the target of the DSA sparse-stage indexer KL, gathered while the
    forward pass computes the probabilities anyway. ``None`` instead where the kernel's
    few-heads path does not run (groups of more than 8 heads, D or D_v not multiples of 16,
    bf16 on AMX, a build without FMA, per-KV-head selections).
    """
    ext = EXTENSION.require(isa)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    out, target = _SparseAttentionCPU.apply(q, k, v, indices.long().contiguous(), causal, float(scale), ext, True)
    return out, (target.view(q.shape[0], q.shape[2], indices.shape[-1]) if target.numel() else None)


def supports(q: Tensor, k: Tensor, v: Tensor, indices: Tensor, needs_grad: bool) -> str | None:
    """None when this kernel can run the inputs, else the reason (float16 CPU tensors: a documented
    fallback to the reference)."""
    if q.device.type != "cpu":
        return f"runs on CPU tensors only, got {q.device.type}"
    if q.dtype == torch.float16:
        return Fallback("float16 on CPU runs on the reference (the CPU kernel takes float32 and bfloat16;"
                        " cast to bfloat16 for speed)")
    if q.dtype not in SUPPORTED_DTYPES:
        return f"dtype {q.dtype} not supported (float32, bfloat16)"
    return None

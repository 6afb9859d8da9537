"""The sparse attention op's implementations and what each declares it supports.

``reference`` (pure PyTorch, any device, the oracle), ``cpu`` (the C++ kernel) and ``triton``
(CUDA, or CPU tensors under ``TRITON_INTERPRET=1``), chosen by :data:`ATTENTION` under the rule of
:mod:`sparse_attention.ops.dispatch` (the op's ``backend=`` option).
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from ..dispatch import Implementation, Op
from . import cpu
from .reference import sparse_attention_reference

#: The sparse attention op; its implementations are chosen with ``backend=``.
ATTENTION = Op("attention", option="backend")


def _reference_supports(q: Tensor, k: Tensor, v: Tensor, indices: Tensor, needs_grad: bool) -> Optional[str]:
    return None  # any device, dtype, head dim and index layout; autograd throughout


def _triton():
    # Imported on first use: importing triton costs about a second and most runs never need it.
    from . import triton

    return triton


ATTENTION.register(Implementation(
    name="reference", priority=0, run=sparse_attention_reference, supports=_reference_supports,
    description="pure PyTorch gather + softmax, chunked over queries (the oracle; any device)",
))
ATTENTION.register(Implementation(
    name="cpu", priority=10, run=cpu.sparse_attention_cpu, supports=cpu.supports,
    description="C++ kernel: per-token GEMMs over gathered keys shared by a KV group, fused softmax,"
    " fp32/bf16, forward and backward (compiled on first use)",
    checks_index_range=True, unavailable=cpu.load_error,
))
ATTENTION.register(Implementation(
    name="triton", priority=20,
    run=lambda q, k, v, indices, *, causal, scale: _triton().sparse_attention_triton(
        q, k, v, indices, causal=causal, scale=scale),
    supports=lambda q, k, v, indices, needs_grad: _triton().supports(q, k, v, indices, needs_grad),
    description="Triton kernel, forward and backward (CUDA; CPU only under TRITON_INTERPRET=1); shared or"
    " per-KV-head selections",
    unavailable=lambda: _triton().unavailable_reason(),
))

#: The names the rest of the package has always used for the attention op's registry.
Backend = Implementation


def backends() -> list[Implementation]:
    """Every sparse attention backend, highest priority first."""
    return ATTENTION.implementations()


def register_backend(backend: Implementation) -> Implementation:
    """Add (or replace) a sparse attention backend."""
    return ATTENTION.register(backend)


def choose_backend(name: str, q: Tensor, k: Tensor, v: Tensor, indices: Tensor, needs_grad: bool) -> Implementation:
    """The backend to run: ``name`` itself, or the best fit when ``name == "auto"``."""
    return ATTENTION.choose(name, q, k, v, indices, needs_grad)

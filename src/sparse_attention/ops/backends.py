"""Backend registry and dispatch for :func:`sparse_attention`.

Each backend declares what it supports through a ``supports`` function that returns
``None`` when it can run the given inputs and a human-readable reason otherwise.
``backend="auto"`` walks the backends by descending priority and takes the first that fits;
when none fits (or an explicit choice does not fit) the error lists every backend's reason.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from .kernels import cpu as _cpu
from .kernels.reference import sparse_attention_reference

Kernel = Callable[..., Tensor]
SupportCheck = Callable[[Tensor, Tensor, Tensor, Tensor, bool], Optional[str]]


@dataclass(frozen=True)
class Backend:
    """A sparse attention kernel and the inputs it can handle.

    Attributes:
        name: identifier passed as ``backend=``.
        priority: higher runs first under ``backend="auto"``.
        kernel: ``kernel(q, k, v, indices, *, causal, scale) -> Tensor``.
        supports: ``supports(q, k, v, indices, needs_grad) -> None | reason``.
        description: one line for ``sparse-attention backends`` and docs.
        unavailable: ``unavailable() -> None | reason`` this backend cannot run here at all
            (extension that fails to build, package not installed); asked by ``backends`` only.
        checks_index_range: the kernel itself raises ValueError for an index outside
            ``[-1, N_k - 1]`` (so :func:`sparse_attention` skips its own pass over the indices).
    """

    name: str
    priority: int
    kernel: Kernel
    supports: SupportCheck
    description: str
    checks_index_range: bool = False
    unavailable: Callable[[], Optional[str]] = lambda: None

    def status(self) -> str:
        """``available`` or ``unavailable: <reason>`` (for ``sparse-attention backends``)."""
        reason = self.unavailable()
        return "available" if reason is None else f"unavailable: {reason}"


_BACKENDS: dict[str, Backend] = {}


def register_backend(backend: Backend) -> Backend:
    """Add (or replace) a backend in the registry."""
    _BACKENDS[backend.name] = backend
    return backend


def backends() -> list[Backend]:
    """All registered backends, highest priority first."""
    return sorted(_BACKENDS.values(), key=lambda b: -b.priority)


def choose_backend(name: str, q: Tensor, k: Tensor, v: Tensor, indices: Tensor, needs_grad: bool) -> Backend:
    """Return the backend to run: ``name`` itself, or the best fit when ``name == "auto"``."""
    if not isinstance(name, str):
        raise TypeError(f"backend must be a string, got {type(name).__name__}")
    if name != "auto":
        if name not in _BACKENDS:
            known = ", ".join(["auto", *(b.name for b in backends())])
            raise ValueError(f"unknown backend {name!r}; expected one of: {known}")
        chosen = _BACKENDS[name]
        reason = chosen.supports(q, k, v, indices, needs_grad)
        if reason is not None:
            raise ValueError(f"backend {name!r} cannot run these inputs: {reason}")
        return chosen
    reasons = []
    for candidate in backends():
        reason = candidate.supports(q, k, v, indices, needs_grad)
        if reason is None:
            if candidate.name == "reference" and q.device.type == "cpu" and q.dtype == torch.float16:
                _say_once("sparse-attention: float16 on CPU runs on the reference backend (the CPU kernel takes"
                          " float32 and bfloat16; cast to bfloat16 for speed)")
            return candidate
        reasons.append(f"{candidate.name}: {reason}")
    raise ValueError("no sparse attention backend supports these inputs:\n  " + "\n  ".join(reasons))


_SAID: set[str] = set()


def _say_once(message: str) -> None:
    """A RuntimeWarning the first time this process meets ``message`` (documented fallbacks)."""
    if message not in _SAID:
        _SAID.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def _reference_supports(q: Tensor, k: Tensor, v: Tensor, indices: Tensor, needs_grad: bool) -> Optional[str]:
    return None  # any device, dtype, head dim and index layout; autograd throughout


register_backend(
    Backend(
        name="reference",
        priority=0,
        kernel=sparse_attention_reference,
        supports=_reference_supports,
        description="pure PyTorch gather + softmax, chunked over queries (the oracle; any device)",
    )
)


register_backend(
    Backend(
        name="cpu",
        priority=10,
        kernel=_cpu.sparse_attention_cpu,
        supports=_cpu.supports,
        description="C++ kernel: per-token GEMMs over gathered keys shared by a KV group, fused softmax,"
        " fp32/bf16, forward and backward (compiled on first use)",
        checks_index_range=True,
        unavailable=lambda: _cpu.load_error(),
    )
)


def _triton_module():
    # Imported on first use: importing triton costs about a second and most runs never need it.
    from .kernels import triton_kernel

    return triton_kernel


register_backend(
    Backend(
        name="triton",
        priority=20,
        kernel=lambda q, k, v, indices, *, causal, scale: _triton_module().sparse_attention_triton(
            q, k, v, indices, causal=causal, scale=scale),
        supports=lambda q, k, v, indices, needs_grad: _triton_module().supports(q, k, v, indices, needs_grad),
        description="Triton kernel, forward and backward (CUDA; CPU only under TRITON_INTERPRET=1); shared or"
        " per-KV-head selections",
        unavailable=lambda: _triton_module().unavailable_reason(),
    )
)

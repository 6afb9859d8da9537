"""Fast CPU sparse attention: a C++ extension compiled on first use and cached.

The extension (every ``csrc/*.cpp``; ``indexer_topk_cpu.cpp`` adds the fused selection of
:mod:`.topk_cpu`) computes, per query token and KV group,
the small GEMMs ``Q_g K_sel^T`` and ``P V_sel`` over the gathered keys (one gather serves
every query head that shares the selection), with a fused softmax; the backward pass
recomputes the probabilities from the saved log-sum-exp. bf16 forward passes of groups of up
to 16 heads with D and D_v multiples of 32 run on the AMX tile unit where the CPU has one
(``amx_attention.h``: products of bf16 values accumulated in fp32, the probabilities rounded
to bf16 for ``P V``, as SDPA's bf16 CPU kernel does); everything else computes in fp32. It is built with
``torch.utils.cpp_extension.load`` (``-O3 -march=native``) into PyTorch's extension cache,
so the first call on a machine takes tens of seconds and later processes load it at once.
If the build fails (no compiler), :func:`load_error` says why and dispatch falls back to
the reference backend with a warning.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import warnings
from pathlib import Path

import torch
from torch import Tensor

_CSRC = Path(__file__).with_name("csrc")
_lock = threading.Lock()
_module = None
_error: str | None = None

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16)


def _extension_name() -> str:
    """Name with a hash of every source and header, so an edited header forces a rebuild
    (PyTorch's JIT cache only hashes the listed sources)."""
    digest = hashlib.sha1()
    for path in sorted(_CSRC.iterdir()):
        digest.update(path.name.encode() + path.read_bytes())
    return f"sparse_attention_cpu_{digest.hexdigest()[:10]}"


def _build():
    from torch.utils.cpp_extension import load

    flags = ["-O3", "-march=native", "-mprefer-vector-width=512", "-fopenmp", "-std=c++17"]
    sources = [str(path) for path in sorted(_CSRC.glob("*.cpp"))]
    return load(name=_extension_name(), sources=sources, extra_cflags=flags,
                extra_ldflags=["-fopenmp"], verbose=os.environ.get("SPARSE_ATTENTION_VERBOSE_BUILD") == "1")


def _is_built() -> bool:
    """Whether PyTorch's extension cache already holds a build (then loading is instant)."""
    try:
        from torch.utils.cpp_extension import _get_build_directory

        return any(Path(_get_build_directory(_extension_name(), False)).glob("*.so"))
    except Exception:  # private helper moved: just say nothing
        return True


def extension():
    """The compiled extension, building it on first use; None when the build failed."""
    global _module, _error
    if _module is None and _error is None:
        with _lock:
            if _module is None and _error is None:
                if not _is_built():
                    sys.stderr.write("sparse-attention: compiling the CPU kernel (first use on this machine, ~30 s)\n")
                try:
                    _module = _build()
                except Exception as err:  # compiler missing or failing: reported, not hidden
                    _error = f"C++ extension build failed ({type(err).__name__}: {str(err).strip()[:300]})"
                    warnings.warn(f"sparse-attention: {_error}; CPU tensors fall back to the slower reference backend",
                                  RuntimeWarning, stacklevel=3)
    return _module


def amx_attention_available() -> bool:
    """Whether bf16 attention runs on AMX tiles here (a CPU with AMX-BF16 that the OS lets use)."""
    ext = extension()
    return bool(ext is not None and ext.amx_attention_available())


def load_error() -> str | None:
    """Why the extension is unavailable (None when it loaded)."""
    extension()
    return _error


class _SparseAttentionCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, indices, causal, scale):
        out, lse = extension().forward(q, k, v, indices, causal, scale)
        ctx.save_for_backward(q, k, v, indices, out, lse)
        ctx.causal, ctx.scale = causal, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, indices, out, lse = ctx.saved_tensors
        dq, dk, dv = extension().backward(q, k, v, indices, ctx.causal, ctx.scale, out, lse, grad_out.contiguous())
        return dq, dk, dv, None, None, None


def sparse_attention_cpu(q: Tensor, k: Tensor, v: Tensor, indices: Tensor, *, causal: bool, scale: float) -> Tensor:
    """Same contract as the reference kernel; inputs are made contiguous and indices int64."""
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    return _SparseAttentionCPU.apply(q, k, v, indices.long().contiguous(), causal, float(scale))


def supports(q: Tensor, k: Tensor, v: Tensor, indices: Tensor, needs_grad: bool) -> str | None:
    """None when this backend can run the inputs, else the reason."""
    if q.device.type != "cpu":
        return f"runs on CPU tensors only, got {q.device.type}"
    if q.dtype not in SUPPORTED_DTYPES:
        return f"dtype {q.dtype} not supported (float32, bfloat16)"
    if load_error() is not None:
        return load_error()
    return None

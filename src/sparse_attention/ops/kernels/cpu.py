"""Fast CPU sparse attention: a C++ extension compiled on first use and cached.

The extension (every ``csrc/*.cpp``; ``indexer_topk_cpu.cpp`` adds the fused selection of
:mod:`.topk_cpu`) computes, per query token and KV group,
the small GEMMs ``Q_g K_sel^T`` and ``P V_sel`` over the gathered keys (one gather serves
every query head that shares the selection), with a fused softmax; the backward pass
recomputes the probabilities from the saved log-sum-exp. bf16 forward passes of groups of up
to 16 heads with D and D_v multiples of 32 run on the AMX tile unit where the CPU has one
(``amx_attention.h``: products of bf16 values accumulated in fp32, the probabilities rounded
to bf16 for ``P V``, as SDPA's bf16 CPU kernel does); everything else computes in fp32. The
lane kernels (``lanes*.h``) run on AVX-512 or AVX2 + FMA (``simd16.h``); a build without FMA runs
portable loops. It is built with ``torch.utils.cpp_extension.load`` into PyTorch's extension
cache for the instruction-set level of ``$SPARSE_ATTENTION_CPU_ISA`` (:data:`ISA_LEVELS`,
default ``native`` = ``-march=native``; each level has its own cached build), so the first call
on a machine takes tens of seconds and later processes load it at once.
If the build fails (no compiler), :func:`load_error` says why and dispatch falls back to
the reference backend with a warning.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import threading
import time
import warnings
from pathlib import Path

import torch
from torch import Tensor

_CSRC = Path(__file__).with_name("csrc")
_lock = threading.Lock()
_modules: dict[str, object] = {}
_errors: dict[str, str] = {}

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16)

#: Environment variable choosing the instruction-set level the kernel is compiled for.
ISA_ENV = "SPARSE_ATTENTION_CPU_ISA"
#: Instruction-set levels and their compiler flags. ``native`` targets the build machine (AMX and
#: AVX512-BF16 paths where it has them); ``avx512`` is x86-64-v4 (AVX-512 F/BW/DQ/VL, no bf16
#: instructions); ``avx2`` is x86-64-v3 (AVX2 + FMA); ``generic`` is baseline x86-64 (SSE2): the
#: portable loops, no lane kernels.
ISA_FLAGS = {
    "native": ["-march=native", "-mprefer-vector-width=512"],
    "avx512": ["-march=x86-64-v4", "-mtune=generic", "-mprefer-vector-width=512"],
    "avx2": ["-march=x86-64-v3", "-mtune=generic"],
    "generic": ["-march=x86-64", "-mtune=generic"],
}
ISA_LEVELS = tuple(ISA_FLAGS)
#: CPU flags (as /proc/cpuinfo names them) each level's code needs to run.
ISA_REQUIRES = {
    "native": (),
    "avx512": ("avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd", "avx2", "fma"),
    "avx2": ("avx2", "fma", "bmi1", "bmi2", "f16c", "movbe"),
    "generic": (),
}
#: Flags worth recording with a result (what the CPU offers the kernels).
REPORTED_CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where it cannot be read)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def isa_level() -> str:
    """The level the kernel is built for: ``$SPARSE_ATTENTION_CPU_ISA``, default ``native``.

    Raises:
        ValueError: the variable names no level of :data:`ISA_LEVELS`.
    """
    level = os.environ.get(ISA_ENV, "native").strip().lower() or "native"
    if level not in ISA_FLAGS:
        raise ValueError(f"{ISA_ENV}={level!r} is not a CPU instruction-set level; expected one of {ISA_LEVELS}")
    return level


def isa_unavailable_reason(level: str) -> str | None:
    """None when code built for ``level`` can run on this CPU, else why not."""
    if level not in ISA_FLAGS:
        raise ValueError(f"isa must be one of {ISA_LEVELS}, got {level!r}")
    if level == "native":
        return None
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"level {level!r} is an x86-64 level; this machine is {platform.machine()}"
    flags = cpu_flags()
    if not flags:
        return None  # cannot tell: let the build and the CPU decide
    missing = [f for f in ISA_REQUIRES[level] if f not in flags]
    return f"this CPU lacks {', '.join(missing)} (needed by the {level!r} build)" if missing else None


def _compile_flags(level: str) -> list[str]:
    march = ISA_FLAGS[level]
    if platform.machine().lower() not in ("x86_64", "amd64"):
        march = ["-mcpu=native"] if level == "native" else march  # x86 flags mean nothing elsewhere
    return ["-O3", *march, "-fopenmp", "-std=c++17"]


def _extension_name(level: str) -> str:
    """Name with the level and a hash of every source and header, so an edited header forces a
    rebuild (PyTorch's JIT cache only hashes the listed sources) and each level has its own build."""
    digest = hashlib.sha1(" ".join(_compile_flags(level)).encode())
    # The sources' own path too: PyTorch rebuilds a cache entry whose source paths changed, so two
    # installs (a clone and a wheel, say) sharing one name would rebuild each other's build silently.
    digest.update(str(_CSRC.resolve()).encode())
    for path in sorted(_CSRC.iterdir()):
        digest.update(path.name.encode() + path.read_bytes())
    return f"sparse_attention_cpu_{level}_{digest.hexdigest()[:10]}"


#: A build lock older than this is left by a build that was killed (a real build takes ~1 minute).
STALE_LOCK_S = 600


def _build_lock(level: str) -> Path | None:
    try:
        from torch.utils.cpp_extension import _get_build_directory

        return Path(_get_build_directory(_extension_name(level), False)) / "lock"
    except Exception:  # private helper moved: no lock to look at
        return None


def clear_stale_lock(level: str) -> None:
    """Remove the build lock of a killed build (PyTorch would wait on it forever), saying so; report
    a fresh one, since then another process is compiling and this one waits for it."""
    lock = _build_lock(level)
    if lock is None or not lock.exists():
        return
    age = time.time() - lock.stat().st_mtime
    if age > STALE_LOCK_S:
        warnings.warn(f"sparse-attention: removing a stale CPU-kernel build lock ({lock}, {age / 60:.0f} min old,"
                      " left by a killed build)", RuntimeWarning, stacklevel=4)
        lock.unlink(missing_ok=True)
    else:
        sys.stderr.write(f"sparse-attention: another process is compiling the CPU kernel ({lock}); waiting\n")


def _build(level: str):
    from torch.utils.cpp_extension import load

    clear_stale_lock(level)
    sources = [str(path) for path in sorted(_CSRC.glob("*.cpp"))]
    return load(name=_extension_name(level), sources=sources, extra_cflags=_compile_flags(level),
                extra_ldflags=["-fopenmp"], verbose=os.environ.get("SPARSE_ATTENTION_VERBOSE_BUILD") == "1")


def _is_built(level: str) -> bool:
    """Whether PyTorch's extension cache already holds a build (then loading is instant)."""
    try:
        from torch.utils.cpp_extension import _get_build_directory

        return any(Path(_get_build_directory(_extension_name(level), False)).glob("*.so"))
    except Exception:  # private helper moved: just say nothing
        return True


def extension(isa: str | None = None):
    """The compiled extension for instruction-set level ``isa`` (default :func:`isa_level`),
    building it on first use; None when the build failed or the CPU cannot run that level."""
    level = isa_level() if isa is None else isa
    if level not in _modules and level not in _errors:
        with _lock:
            if level not in _modules and level not in _errors:
                reason = isa_unavailable_reason(level)
                if reason is not None:
                    _errors[level] = reason
                    warnings.warn(f"sparse-attention: CPU kernel level {level!r} unavailable: {reason}; CPU"
                                  " tensors fall back to the slower reference backend", RuntimeWarning, stacklevel=3)
                    return None
                if not _is_built(level):
                    sys.stderr.write(f"sparse-attention: compiling the CPU kernel for {level!r} "
                                     "(first use on this machine, ~30-60 s)\n")
                try:
                    _modules[level] = _build(level)
                except Exception as err:  # compiler missing or failing: reported, not hidden
                    _errors[level] = f"C++ extension build failed ({type(err).__name__}: {str(err).strip()[:300]})"
                    warnings.warn(f"sparse-attention: {_errors[level]}; CPU tensors fall back to the slower reference"
                                  " backend", RuntimeWarning, stacklevel=3)
    return _modules.get(level)


def load_error(isa: str | None = None) -> str | None:
    """Why the extension for ``isa`` is unavailable (None when it loaded)."""
    level = isa_level() if isa is None else isa
    extension(level)
    return _errors.get(level)


def build_info(isa: str | None = None) -> dict:
    """What the kernel was built for and what the CPU offers, for result files.

    Returns ``{"isa_level", "compile_flags", "compiled_features", "cpu_flags", "amx_attention"}``;
    ``compiled_features`` lists the instruction sets the build's code may use (empty when it
    did not load, with ``"load_error"`` saying why).
    """
    level = isa_level() if isa is None else isa
    ext = extension(level)
    flags = cpu_flags()
    info = {
        "isa_level": level,
        "compile_flags": _compile_flags(level),
        "compiled_features": list(ext.compiled_features()) if ext is not None else [],
        "cpu_flags": [f for f in REPORTED_CPU_FLAGS if f in flags],
        "amx_attention": bool(ext is not None and ext.amx_attention_available()),
    }
    if ext is None:
        info["load_error"] = _errors.get(level)
    return info


#: Variables that hold PyTorch's own CPU kernels to an instruction set (recorded with results).
ISA_CAP_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def cpu_kernel_info() -> dict:
    """:func:`build_info` plus the ISA PyTorch's dense kernels use and any ISA caps set, for result files."""
    info = build_info()
    info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    info["isa_caps"] = {name: os.environ[name] for name in ISA_CAP_VARIABLES if name in os.environ}
    return info


def machine_with_kernel(device: torch.device | str = "cpu") -> dict:
    """:func:`~sparse_attention.utils.machine.machine_info` plus, on CPU, ``cpu_kernel``
    (:func:`cpu_kernel_info`: the ISA the kernel was built for), as every result file records it."""
    from ...utils.machine import machine_info

    machine = machine_info(device)
    if torch.device(device).type == "cpu":
        machine["cpu_kernel"] = cpu_kernel_info()
    return machine


def amx_attention_available(isa: str | None = None) -> bool:
    """Whether bf16 attention runs on AMX tiles here (a CPU with AMX-BF16 that the OS lets use)."""
    ext = extension(isa)
    return bool(ext is not None and ext.amx_attention_available())


def _saved_indices(indices: Tensor, n_keys: int) -> Tensor:
    """``indices`` as int32 when every key position fits (half the saved bytes), else as they are."""
    return indices.int() if n_keys < 2**31 else indices


class _SparseAttentionCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, indices, causal, scale, ext):
        out, lse = ext.forward(q, k, v, indices, causal, scale)
        # Kept as int32 until the backward: the selection is the largest tensor a sparse layer
        # saves (N x K per selection head), and key positions fit 32 bits.
        ctx.save_for_backward(q, k, v, _saved_indices(indices, k.shape[2]), out, lse)
        ctx.causal, ctx.scale, ctx.ext = causal, scale, ext
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, indices, out, lse = ctx.saved_tensors
        dq, dk, dv = ctx.ext.backward(q, k, v, indices.long(), ctx.causal, ctx.scale, out, lse, grad_out.contiguous())
        return dq, dk, dv, None, None, None, None


def sparse_attention_cpu(q: Tensor, k: Tensor, v: Tensor, indices: Tensor, *, causal: bool, scale: float,
                         isa: str | None = None) -> Tensor:
    """Same contract as the reference kernel; inputs are made contiguous and indices int64.

    ``isa``: the build to run (:data:`ISA_LEVELS`; default :func:`isa_level`), for tests and
    benchmarks of one level on a machine that has several.
    """
    ext = extension(isa)
    if ext is None:
        raise ValueError(f"the CPU kernel for {isa or isa_level()!r} is unavailable: {load_error(isa)}")
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    return _SparseAttentionCPU.apply(q, k, v, indices.long().contiguous(), causal, float(scale), ext)


def supports(q: Tensor, k: Tensor, v: Tensor, indices: Tensor, needs_grad: bool) -> str | None:
    """None when this backend can run the inputs, else the reason."""
    if q.device.type != "cpu":
        return f"runs on CPU tensors only, got {q.device.type}"
    if q.dtype not in SUPPORTED_DTYPES:
        return f"dtype {q.dtype} not supported (float32, bfloat16)"
    if load_error() is not None:
        return load_error()
    return None

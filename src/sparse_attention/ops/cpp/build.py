"""The build of every op's C++ extension: instruction-set levels, one cached build per op and level.

Each op room keeps its C++ in its own ``csrc/`` (one ``.cpp`` with its ``PYBIND11_MODULE`` and the
op's own headers); headers shared by several ops live in ``include/`` beside this file. An op's
extension (:class:`CppExtension`) is compiled with ``torch.utils.cpp_extension.load`` on first
use, for the instruction-set level of ``$SPARSE_ATTENTION_CPU_ISA`` (:data:`ISA_LEVELS`, default
``native`` = ``-march=native``), into PyTorch's extension cache under a name made of the op, the
level and a hash of the flags and of every source and header it can include. So editing one op
rebuilds that op only, each level has its own build, and two installs of the same sources (a
clone and a wheel) share one build: the sources are staged inside the build directory, whose name
already says their content, so the compiler always sees the same paths. The first call of an op
on a machine takes ~10-30 s; later processes load it at once. If the build fails (no compiler)
:meth:`CppExtension.load_error` says why and dispatch falls back to the op's reference with a
warning (:mod:`sparse_attention.ops.dispatch`).
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

#: Headers shared by several ops (SIMD lanes, aligned buffers, AMX tiles, key ranges, exp).
SHARED_INCLUDE = Path(__file__).with_name("include")

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


def compile_flags(level: str) -> list[str]:
    """The compiler flags of ``level`` on this machine."""
    march = ISA_FLAGS[level]
    if platform.machine().lower() not in ("x86_64", "amd64"):
        march = ["-mcpu=native"] if level == "native" else march  # x86 flags mean nothing elsewhere
    return ["-O3", *march, "-fopenmp", "-std=c++17"]


#: A build lock older than this is left by a build that was killed (a real build takes ~1 minute).
STALE_LOCK_S = 600


def clear_stale_lock(lock: Path | None) -> None:
    """Remove the build lock of a killed build (PyTorch would wait on it forever), saying so; report
    a fresh one, since then another process is compiling and this one waits for it."""
    if lock is None or not lock.exists():
        return
    age = time.time() - lock.stat().st_mtime
    if age > STALE_LOCK_S:
        warnings.warn(f"sparse-attention: removing a stale CPU-kernel build lock ({lock}, {age / 60:.0f} min old,"
                      " left by a killed build)", RuntimeWarning, stacklevel=4)
        lock.unlink(missing_ok=True)
    else:
        sys.stderr.write(f"sparse-attention: another process is compiling a CPU kernel ({lock}); waiting\n")


def _build_directory(name: str) -> Path | None:
    try:
        from torch.utils.cpp_extension import _get_build_directory

        return Path(_get_build_directory(name, False))
    except Exception:  # private helper moved: PyTorch picks the directory itself
        return None


def _write_if_missing(path: Path, data: bytes) -> None:
    """Stage one file; a concurrent process writes the same bytes, so the rename is atomic and safe."""
    if path.exists() and path.read_bytes() == data:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


#: Every op's extension by op name (each room's ``cpu.py`` creates its own on import).
EXTENSIONS: dict[str, "CppExtension"] = {}


class CppExtension:
    """One op's C++ extension: the ``.cpp`` and headers of ``csrc`` plus :data:`SHARED_INCLUDE`.

    Args:
        op: the op's name (part of the cache name, e.g. ``topk``).
        csrc: the op's source folder: its ``.cpp`` files (compiled) and its own headers.
    """

    def __init__(self, op: str, csrc: Path):
        self.op, self.csrc = op, csrc
        self._lock = threading.Lock()
        self._modules: dict[str, object] = {}
        self._errors: dict[str, str] = {}
        EXTENSIONS.setdefault(op, self)

    def files(self) -> list[Path]:
        """Every file the build reads: the op's sources and headers, then the shared headers."""
        return sorted(self.csrc.iterdir()) + sorted(SHARED_INCLUDE.iterdir())

    def name(self, level: str) -> str:
        """``sparse_attention_<op>_<level>_<hash>``: the hash covers the flags and the content of every
        file the build reads (PyTorch's own cache only hashes the listed sources), not where they are."""
        digest = hashlib.sha1(" ".join(compile_flags(level)).encode())
        for path in self.files():
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
        return f"sparse_attention_{self.op}_{level}_{digest.hexdigest()[:10]}"

    def build_lock(self, level: str) -> Path | None:
        directory = _build_directory(self.name(level))
        return None if directory is None else directory / "lock"

    def _stage(self, level: str) -> tuple[list[str], list[str]]:
        """Copy the files into ``<build dir>/src`` (one flat folder: ``#include "x.h"`` finds every
        header) and return the sources and include path to compile from there."""
        directory = _build_directory(self.name(level))
        if directory is None:  # compile in place
            return [str(p) for p in sorted(self.csrc.glob("*.cpp"))], [str(SHARED_INCLUDE)]
        staged = directory / "src"
        staged.mkdir(parents=True, exist_ok=True)
        for path in self.files():
            _write_if_missing(staged / path.name, path.read_bytes())
        return [str(staged / p.name) for p in sorted(self.csrc.glob("*.cpp"))], [str(staged)]

    def _build(self, level: str):
        from torch.utils.cpp_extension import load

        clear_stale_lock(self.build_lock(level))
        sources, include = self._stage(level)
        name = self.name(level)
        # A plain shared library whose functions register with PyTorch's dispatcher (op_library.h):
        # loading it makes them torch.ops.<name>.<function>.
        load(name=name, sources=sources, extra_include_paths=include, extra_cflags=compile_flags(level),
             extra_ldflags=["-fopenmp"], is_python_module=False,
             verbose=os.environ.get("SPARSE_ATTENTION_VERBOSE_BUILD") == "1")
        return getattr(torch.ops, name)

    def is_built(self, level: str) -> bool:
        """Whether PyTorch's extension cache already holds this build (then loading is instant)."""
        directory = _build_directory(self.name(level))
        return directory is None or any(directory.glob("*.so"))

    def module(self, isa: str | None = None):
        """The compiled module for instruction-set level ``isa`` (default :func:`isa_level`), built on
        first use; None when the build failed or the CPU cannot run that level (a warning says why)."""
        level = isa_level() if isa is None else isa
        if level not in self._modules and level not in self._errors:
            with self._lock:
                if level not in self._modules and level not in self._errors:
                    self._load(level)
        return self._modules.get(level)

    def _load(self, level: str) -> None:
        reason = isa_unavailable_reason(level)
        if reason is not None:
            self._errors[level] = reason
            warnings.warn(f"sparse-attention: the {self.op} CPU kernel at level {level!r} is unavailable: {reason};"
                          " CPU tensors fall back to its slower reference", RuntimeWarning, stacklevel=4)
            return
        if not self.is_built(level):
            sys.stderr.write(f"sparse-attention: compiling the {self.op} CPU kernel for {level!r} "
                             "(first use on this machine, ~10-30 s)\n")
        try:
            self._modules[level] = self._build(level)
        except Exception as err:  # compiler missing or failing: reported, not hidden
            self._errors[level] = f"C++ extension build failed ({type(err).__name__}: {str(err).strip()[:300]})"
            warnings.warn(f"sparse-attention: the {self.op} CPU kernel: {self._errors[level]}; CPU tensors fall back"
                          " to its slower reference", RuntimeWarning, stacklevel=4)

    def load_error(self, isa: str | None = None) -> str | None:
        """Why the extension for ``isa`` is unavailable (None when it loaded)."""
        level = isa_level() if isa is None else isa
        self.module(level)
        return self._errors.get(level)

    def require(self, isa: str | None = None):
        """The module, or ValueError saying why it is unavailable."""
        module = self.module(isa)
        if module is None:
            raise ValueError(f"the {self.op} CPU kernel for {isa or isa_level()!r} is unavailable:"
                             f" {self.load_error(isa)}")
        return module


def prebuild(builds, workers: int = 2, log=None) -> dict[str, str]:
    """Compile the ``(op, level)`` extensions of ``builds`` that this CPU runs and the cache lacks,
    ``workers`` at a time (one compiler job each; on first use they would build one after another).
    Each worker is a process that imports PyTorch once and takes the next build as soon as it is
    free (PyTorch's start-up would otherwise cost seconds per build). Returns ``{"op/level":
    error}`` for the builds that failed; a later :meth:`CppExtension.module` loads the rest from
    the cache at once.

    Args:
        builds: ``(op, level)`` pairs: an op of :data:`EXTENSIONS`, a level of :data:`ISA_LEVELS`.
        workers: builds at a time. log: called with a line per finished build (e.g. ``print``), or None.
    """
    import json
    import selectors
    import subprocess

    pending = [(op, level) for op, level in dict.fromkeys(builds)
               if isa_unavailable_reason(level) is None and not EXTENSIONS[op].is_built(level)]
    failed: dict[str, str] = {}
    start = time.perf_counter()
    selector = selectors.DefaultSelector()
    busy: dict[subprocess.Popen, str] = {}  # worker -> "op/level" it is building

    def hand_out(worker):
        if pending:
            op, level = pending.pop(0)
            worker.stdin.write(f"{op} {level}\n")
            worker.stdin.flush()
            busy[worker] = f"{op}/{level}"
        else:
            selector.unregister(worker.stdout)
            worker.stdin.close()  # the worker's loop ends

    workers_started = [subprocess.Popen(
        [sys.executable, "-c", "from sparse_attention.ops.cpp.build import _serve; _serve()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for _ in range(min(max(1, workers), len(pending)))]
    for worker in workers_started:
        selector.register(worker.stdout, selectors.EVENT_READ, worker)
        hand_out(worker)
    while busy:
        for key, _ in selector.select():
            worker = key.data
            line = worker.stdout.readline()
            build = busy.pop(worker)
            if line:
                error = json.loads(line)
                hand_out(worker)
            else:  # the worker died (killed, or crashed loading a build): the others go on
                selector.unregister(worker.stdout)
                error = f"the build process exited with status {worker.wait()}"
            if error is not None:
                failed[build] = error
            if log is not None:
                outcome = "failed to compile" if error is not None else "compiled"
                log(f"sparse-attention: {outcome} the {build} CPU kernel ({time.perf_counter() - start:.0f} s)")
    for op, level in pending:  # left when every worker died
        failed[f"{op}/{level}"] = "not built: every build process exited"
    for worker in workers_started:
        worker.wait()
    return failed


def _serve() -> None:
    """A :func:`prebuild` worker: reads ``op level`` lines from stdin, builds each, and answers each
    with a JSON line on stdout: null, or why the build failed."""
    import importlib
    import json

    for line in sys.stdin:
        op, level = line.split()
        importlib.import_module(f"sparse_attention.ops.{op}.cpu")  # registers the op's extension
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a failure is answered, and said once by the caller
            error = EXTENSIONS[op].load_error(level)
        sys.stdout.write(json.dumps(error) + "\n")
        sys.stdout.flush()

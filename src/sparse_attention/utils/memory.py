"""Peak memory of one call, measured (never estimated) on CUDA and on Linux CPUs.

* **CUDA**: the caching allocator's statistics. ``max_memory_allocated`` after the call
  minus ``memory_allocated`` before it, with the peak counter reset just before the call:
  the extra device memory the call held at its peak (inputs that already existed excluded).
* **CPU (Linux)**: PyTorch keeps no allocator statistics on CPU, so the process's resident
  set is measured instead. Writing ``5`` to ``/proc/self/clear_refs`` resets the kernel's
  high-water mark ``VmHWM`` to the current ``VmRSS``; after the call, ``VmHWM`` minus the
  ``VmRSS`` read before it is the extra resident memory at the peak (pages touched, not
  merely reserved). For freed tensors to leave the resident set at once, glibc must return
  them to the kernel instead of keeping them in its heap: during the measured call glibc's
  mmap threshold is a fixed 64 KiB (``mallopt(M_MMAP_THRESHOLD)``; a fixed threshold also
  turns off glibc's dynamic threshold, which would otherwise rise after the first large free
  and keep later large blocks in the heap). Every large allocation then page-faults afresh,
  which slows allocation-heavy code (the reference sparse kernel ran up to ~1.8x slower at
  N=2048), so **never time a call under this setting**. Afterwards the thresholds are set
  to where glibc's dynamic threshold ends up in a long-running process (mmap 32 MiB, trim
  64 MiB): glibc offers no way to switch the dynamic threshold back on. Resolution is one
  page; ``malloc_trim(0)`` before the call returns free heap pages left from earlier calls,
  so that the call cannot reuse memory that is already resident. Memory other threads of
  the process touch meanwhile counts too.
* **Free blocks already in the heap** defeat the threshold: glibc serves a request from its free
  lists before it considers a new mapping, and a block freed back to a free list keeps its pages
  resident. A process that ran large work under the dynamic threshold (blocks up to 32 MiB in the
  heap) therefore reports more than the call's live bytes: every heap block it touches counts, as
  if nothing it freed were reusable elsewhere. :func:`~sparse_attention.utils.fresh_process.run_in_fresh_process` runs a measurement
  in a new process whose threshold is fixed from its start, so its heap never holds such blocks.
* **Python's garbage collector** is off during the measured call on either device, so that no
  garbage of earlier calls is freed inside it (which would hide part of its peak); before it only
  the young generations are collected (the recent garbage, e.g. of the previous call). A full
  collection walks every object of the process, which in a long-lived one (a test session,
  a notebook) took ~0.4 s per measurement and dominated small experiments.
* Elsewhere (macOS, Windows, MPS, no glibc, a kernel without a writable ``clear_refs``) the
  result is ``None`` and :func:`peak_memory_unavailable` says why: no number is made up.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import gc
import os
import sys
from collections.abc import Callable
from typing import Any

import torch

from .timing import synchronize

#: glibc ``mallopt`` parameter numbers (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: During a measurement: allocations above this many bytes get their own mmap and go back
#: to the OS when freed.
MMAP_THRESHOLD_BYTES = 64 * 1024
#: Afterwards: glibc's dynamic thresholds at their ceiling (DEFAULT_MMAP_THRESHOLD_MAX, 2x).
RESTORED_MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
RESTORED_TRIM_THRESHOLD_BYTES = 64 * 1024 * 1024
#: The environment variable that fixes glibc's mmap threshold from a process's start.
MMAP_THRESHOLD_ENV = "MALLOC_MMAP_THRESHOLD_"
_CLEAR_REFS = "/proc/self/clear_refs"
_STATUS = "/proc/self/status"


@functools.cache
def _libc():
    """glibc with ``mallopt``, or None (not Linux, musl, no C library found). Looked up once:
    ``find_library`` runs ``ldconfig`` in a subprocess."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") else None


def _set_prompt_release(prompt: bool) -> bool:
    """Fixed 64 KiB mmap threshold (``prompt``) or the restored thresholds; False on failure. A
    process started by :func:`~.fresh_process.run_in_fresh_process` keeps the fixed threshold throughout."""
    libc = _libc()
    if libc is None:
        return False
    if prompt or os.environ.get(MMAP_THRESHOLD_ENV) == str(MMAP_THRESHOLD_BYTES):
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    return bool(libc.mallopt(M_MMAP_THRESHOLD, RESTORED_MMAP_THRESHOLD_BYTES)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, RESTORED_TRIM_THRESHOLD_BYTES))


def _status_kib(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (e.g. ``VmRSS``) in KiB."""
    with open(_STATUS) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"{field} not in {_STATUS}")


def _reset_high_water_mark() -> None:
    with open(_CLEAR_REFS, "w") as f:
        f.write("5")


@contextlib.contextmanager
def _collector_paused():
    """Collect the young generations, then keep the cyclic garbage collector off until the end of
    the block (restored as it was)."""
    enabled = gc.isenabled()
    gc.collect(1)
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def peak_memory_unavailable(device: torch.device | str) -> str | None:
    """Why peak memory cannot be measured on ``device`` here, or None when it can."""
    kind = torch.device(device).type
    if kind == "cuda":
        return None if torch.cuda.is_available() else "CUDA is not available"
    if kind != "cpu":
        return f"no peak-memory statistics for device type {kind!r}"
    if not sys.platform.startswith("linux"):
        return f"CPU peak memory needs Linux /proc (platform {sys.platform})"
    try:
        _reset_high_water_mark()
        _status_kib("VmHWM")
        _status_kib("VmRSS")
    except OSError as error:
        return f"cannot reset or read the resident-set high-water mark: {error}"
    if _libc() is None:
        return "no glibc mallopt: freed memory could stay resident and distort the peak"
    return None


def peak_memory_bytes(fn: Callable[[], Any], device: torch.device | str) -> tuple[Any, int | None]:
    """Run ``fn()`` once and measure the extra memory it held at its peak.

    Args:
        fn: the call to measure (its result is returned; keep warm-up calls outside).
        device: where ``fn`` computes: ``cuda`` (allocator statistics) or ``cpu`` (resident set).
    Returns:
        ``(fn(), bytes)``; ``bytes`` is None when :func:`peak_memory_unavailable` gives a
        reason (then ``fn`` still runs once). The result itself counts while it is alive,
        which it is at the end of the call. On CPU, time ``fn`` in another call (see above).
    """
    device = torch.device(device)
    if peak_memory_unavailable(device) is not None:
        return fn(), None
    if device.type == "cuda":
        with _collector_paused():
            synchronize(device)
            before = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            result = fn()
            synchronize(device)
        return result, max(0, torch.cuda.max_memory_allocated(device) - before)
    if not _set_prompt_release(True):
        return fn(), None
    try:
        with _collector_paused():
            # Hand free heap pages back, so that the call cannot reuse memory already resident.
            _libc().malloc_trim(0)
            before_kib = _status_kib("VmRSS")
            _reset_high_water_mark()
            result = fn()
            peak_kib = _status_kib("VmHWM")
    finally:
        _set_prompt_release(False)
    return result, max(0, peak_kib - before_kib) * 1024


def reset_peak_memory(device: torch.device | str) -> None:
    """Start a measurement window for :func:`peak_memory_since_reset` (no-op where unavailable)."""
    if peak_memory_unavailable(device) is not None:
        return
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        _reset_high_water_mark()


def peak_memory_since_reset(device: torch.device | str) -> int | None:
    """Peak memory in bytes since :func:`reset_peak_memory`: CUDA allocated bytes, or the
    process's resident set (``VmHWM``, all of it, not the extra) on Linux CPUs; None elsewhere."""
    if peak_memory_unavailable(device) is not None:
        return None
    if torch.device(device).type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return _status_kib("VmHWM") * 1024


def saved_tensor_bytes(fn: Callable[[], Any]) -> tuple[Any, int]:
    """Run ``fn()`` (a forward pass) and count the bytes autograd saves for the backward meanwhile.

    Every tensor a backward will need (the activations of autograd ops and what custom
    functions pass to ``save_for_backward``) goes through a saved-tensors pack hook; distinct
    storages are counted once, whole. Unlike :func:`peak_memory_bytes` this is exact and the same
    on every device and run; it leaves out the temporaries of the forward and the backward.

    Returns:
        ``(fn(), bytes)``.
    """
    storages: dict[tuple[str, int], int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages.setdefault((str(tensor.device), storage.data_ptr()), storage.nbytes())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = fn()
    return result, sum(storages.values())

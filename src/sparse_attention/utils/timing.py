"""Wall-clock timing that is fair across devices (synchronises GPU queues)."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch


def synchronize(device: torch.device | str) -> None:
    """Wait for queued work on ``device`` (no-op on CPU)."""
    kind = torch.device(device).type
    if kind == "cuda":
        torch.cuda.synchronize()
    elif kind == "mps":
        torch.mps.synchronize()


def time_call(fn: Callable[[], Any], device: torch.device | str = "cpu", *, repeats: int = 3,
              warmup: int = 1) -> dict[str, float]:
    """Run ``fn`` ``warmup`` times, then time ``repeats`` runs.

    Returns ``{"median_ms", "min_ms", "repeats"}``. Compare two timings only when they were
    measured in the same process on the same machine, as a ratio.
    """
    for _ in range(warmup):
        fn()
    synchronize(device)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        samples.append((time.perf_counter() - start) * 1e3)
    return {"median_ms": statistics.median(samples), "min_ms": min(samples), "repeats": repeats}


def time_interleaved(fns: list[Callable[[], Any]], device: torch.device | str = "cpu", *, repeats: int = 3,
                     warmup: int = 1) -> list[dict[str, float]]:
    """:func:`time_call` for several functions, one call of each per round, rounds repeated.

    A machine whose speed drifts (shared or throttled CPUs) then slows every function alike, so
    ratios of the results stay fair where back-to-back blocks of repeats would favour whichever
    function ran in the faster period. Returns one ``{"median_ms", "min_ms", "repeats"}`` per fn.
    """
    for _ in range(warmup):
        for fn in fns:
            fn()
    synchronize(device)
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, samples):
            start = time.perf_counter()
            fn()
            synchronize(device)
            out.append((time.perf_counter() - start) * 1e3)
    return [{"median_ms": statistics.median(x), "min_ms": min(x), "repeats": repeats} for x in samples]

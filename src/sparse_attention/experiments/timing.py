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

"""Self time of every operator in one call of each of several functions (``torch.profiler``), for
telling which operators make two training steps differ (``lm profile --ops``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import torch


def op_times(fns: dict[str, Callable[[], object]], device: torch.device | str = "cpu",
             top: int | None = 25) -> list[dict]:
    """Profile one call of each function (after the caller's warm-up) and compare their operators.

    Args:
        fns: name -> function, e.g. ``{"dense": step, "dsa": step}``.
        device: where they compute (CUDA adds the profiler's CUDA activity; times are the host's
            self time of each operator either way).
        top: keep the operators whose times differ most between the first two functions
            (all when None, or when there is one function).
    Returns:
        ``[{"op": name, "<fn name>_ms": self ms, ...}]``, the largest difference first.
    """
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if torch.device(device).type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    totals: dict[str, Counter] = {}
    for name, fn in fns.items():
        with profile(activities=activities) as prof:
            fn()
        totals[name] = Counter()
        for event in prof.key_averages():
            totals[name][event.key] += event.self_cpu_time_total / 1e3  # us -> ms
    names = list(fns)
    ops = sorted(set().union(*(set(t) for t in totals.values())))
    if len(names) >= 2:
        first, second = totals[names[0]], totals[names[1]]
        ops.sort(key=lambda op: -abs(second[op] - first[op]))
    else:
        ops.sort(key=lambda op: -totals[names[0]][op])
    rows = [{"op": op, **{f"{name}_ms": totals[name][op] for name in names}} for op in ops]
    return rows if top is None else rows[:top]

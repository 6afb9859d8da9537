"""Scalability: forward time and peak memory against N, each method next to dense SDPA.

Inputs: ``gaussian_qkv`` (B=1, the suite's head_dim; heads and KV heads per head layout:
the suite's ``heads:kv_heads``, or each of ``head_layouts`` in turn, e.g. GQA 4:2 next to
MQA 4:1), causal, forward only under ``torch.no_grad()``. For each layout and N, ``repeats``
rounds; in every round each method runs right after one dense SDPA call (so drift of a
shared machine hits both), once per method:

* **end to end**: ``select`` then ``sparse_attention(..., backend="auto")`` timed as one call
  with ``time_call``; the device is synchronised between the two phases and the time at the
  boundary splits it into **selection** and **kernel** (the backend ``auto`` chose is
  recorded, so faster kernels show up here when they are registered);
* **dense**: ``dense_attention`` (SDPA), timed the same way.

Times are medians over rounds; a method's ratio divides by the median of the dense calls
paired with it. Peak memory is measured in one extra call per method and per N for dense
after the timing rounds (:mod:`.memory`: CUDA allocator peak or, on CPU, the resident-set
high-water mark; never inside a timed call, because the CPU measurement changes allocator
behaviour), as extra bytes over the inputs; the output counts. The selection alone gets one
more such call: its peak next to the bytes of the index tensor it returns
(``selection_memory_ratio``), which shows whether a selection holds more than its output.

Which kernel runs is whatever ``backend="auto"`` picks (recorded per row): the C++ ``cpu``
backend for float32/bfloat16 CPU tensors when it compiled, else the pure-PyTorch reference.
The suite's shape (4:2 heads) gives groups of 2 heads, where the kernel's many-head fast
path does not apply; ``sparse-attention bench kernels`` measures the kernels in their
intended MQA setting. Cost on 2 CPU cores (torch with 2 threads): quick
(lengths 512-2048, 2 rounds) took 20 s with no other job running and 45-230 s while other
jobs shared the cores (1-minute load average 3-5; the settings record the load before and
after). One round plus the memory call took 19.6 s at N=4096 and 51.4 s at N=8192 on the
idle machine (a memory call costs ~1.5 rounds), so full mode (512-8192, 3 rounds) takes an
estimated 2.5-3 minutes idle.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

import torch

from ...data.synthetic import gaussian_qkv
from ...ops.dense import dense_attention
from ...ops.attention import sparse_attention
from ...selection.base import select
from ...utils.memory import peak_memory_bytes, peak_memory_unavailable
from ...utils.timing import synchronize, time_call
from .context import RunContext

QUICK_REPEATS = 2
FULL_REPEATS = 3
#: One untimed round at this length first, so one-off costs (thread pools, lazy imports,
#: first kernel dispatch) land in no measurement.
WARMUP_LENGTH = 128


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _end_to_end(q, k, v, method: str, params: dict[str, Any], device) -> dict[str, Any]:
    """One end-to-end call timed by ``time_call``, split at the phase boundary.

    Returns ``{"end_to_end_ms", "selection_ms", "kernel_ms", "backend", "slots"}``.
    """
    phase: dict[str, Any] = {}

    def call():
        start = time.perf_counter()
        selection = select(q, k, method, causal=True, **params)
        synchronize(device)
        phase["boundary"] = time.perf_counter()
        phase["selection_ms"] = (phase["boundary"] - start) * 1e3
        out, phase["backend"] = sparse_attention(q, k, v, selection.indices, causal=True, backend="auto",
                                                 return_backend=True)
        phase["slots"] = selection.top_k
        return out

    total = time_call(call, device, repeats=1, warmup=0)["median_ms"]
    return {"end_to_end_ms": total, "selection_ms": phase["selection_ms"],
            "kernel_ms": total - phase["selection_ms"], "backend": phase["backend"], "slots": phase["slots"]}


def _dense_ms(q, k, v, device) -> float:
    return time_call(lambda: dense_attention(q, k, v, causal=True), device, repeats=1, warmup=0)["median_ms"]


def _load_average() -> float | None:
    """1-minute load average (other jobs sharing the cores slow every timing), None if unknown."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def _selection_peak(q, k, method: str, params: dict[str, Any], device) -> tuple[int | None, int]:
    """Peak memory of the selection alone and the bytes of the index tensor it returns."""
    selection, peak = peak_memory_bytes(lambda: select(q, k, method, causal=True, **params), device)
    return peak, selection.indices.numel() * selection.indices.element_size()


def measure_length(q, k, v, methods: list[str], settings: dict[str, dict], repeats: int,
                   device) -> list[dict[str, Any]]:
    """Time and peak memory of every method at one sequence length.

    Args:
        q: ``[1, H, N, D]``; k, v: ``[1, H_kv, N, D]``, on ``device``.
        methods: method names (``dense`` = SDPA alone); settings: method -> parameters.
        repeats: timing rounds (each: one dense call before every method's call).
    Returns:
        One row per method (dense first) with the layout (``heads``, ``kv_heads``), medians,
        ratios to dense, peak memory and (sparse methods) the selection's own peak memory.
    """
    sparse = [m for m in methods if m != "dense"]
    samples: dict[str, list[dict[str, Any]]] = {m: [] for m in sparse}
    paired_dense: dict[str, list[float]] = {m: [] for m in sparse}
    dense_all: list[float] = []
    with torch.no_grad():
        for _ in range(repeats):
            if not sparse:
                dense_all.append(_dense_ms(q, k, v, device))
            for method in sparse:  # interleaved: dense, method, dense, method, ...
                ms = _dense_ms(q, k, v, device)
                dense_all.append(ms)
                paired_dense[method].append(ms)
                samples[method].append(_end_to_end(q, k, v, method, settings[method], device))
        # Memory after the timing rounds: the CPU measurement must not overlap a timed call.
        _, dense_peak = peak_memory_bytes(lambda: _dense_ms(q, k, v, device), device)
        peaks = {m: peak_memory_bytes(lambda m=m: _end_to_end(q, k, v, m, settings[m], device), device)[1]
                 for m in sparse}
        selection_peaks = {m: _selection_peak(q, k, m, settings[m], device) for m in sparse}
    n = q.shape[2]
    layout = {"heads": q.shape[1], "kv_heads": k.shape[1]}
    dense_ms = _median(dense_all)
    rows = [{"n": n, **layout, "method": "dense", "backend": "sdpa", "slots": n, "selection_ms": None,
             "kernel_ms": dense_ms,
             "end_to_end_ms": dense_ms, "dense_ms": dense_ms, "time_ratio": 1.0, "kernel_ratio": 1.0,
             "selection_ratio": None, "peak_bytes": dense_peak, "dense_peak_bytes": dense_peak,
             "memory_ratio": _ratio(dense_peak, dense_peak), "repeats": len(dense_all)}]
    for method in sparse:
        runs = samples[method]
        pair = _median(paired_dense[method])
        row = {"n": n, **layout, "method": method, "backend": runs[-1]["backend"], "slots": runs[-1]["slots"]}
        for key in ("selection_ms", "kernel_ms", "end_to_end_ms"):
            row[key] = _median([r[key] for r in runs])
        row.update({"dense_ms": pair, "time_ratio": row["end_to_end_ms"] / pair,
                    "kernel_ratio": row["kernel_ms"] / pair, "selection_ratio": row["selection_ms"] / pair,
                    "peak_bytes": peaks[method], "dense_peak_bytes": dense_peak,
                    "memory_ratio": _ratio(peaks[method], dense_peak), "repeats": len(runs)})
        sel_peak, index_bytes = selection_peaks[method]
        row.update({"selection_peak_bytes": sel_peak, "index_bytes": index_bytes,
                    "selection_memory_ratio": _ratio(sel_peak, index_bytes)})
        rows.append(row)
    return rows


def run(ctx: RunContext) -> dict[str, Any]:
    """Time and peak memory per (head layout, N, method), as ratios to dense SDPA measured alongside."""
    cfg = ctx.config
    repeats = QUICK_REPEATS if cfg.quick else FULL_REPEATS
    methods = list(cfg.methods)
    settings = {m: ctx.settings(m) for m in methods}
    layouts = cfg.layouts()
    load_before = _load_average()
    warm = min(WARMUP_LENGTH, min(cfg.lengths))
    heads, kv_heads = layouts[0]
    q, k, v = (t.to(ctx.device) for t in gaussian_qkv(batch=1, heads=heads, kv_heads=kv_heads,
                                                        head_dim=cfg.head_dim, length=warm, seed=cfg.seed))
    measure_length(q, k, v, methods, settings, 1, ctx.device)  # untimed warm-up round
    rows = []
    for heads, kv_heads, n in ctx.progress([(h, h_kv, n) for h, h_kv in layouts for n in cfg.lengths], "scalability"):
        q, k, v = (t.to(ctx.device) for t in gaussian_qkv(batch=1, heads=heads, kv_heads=kv_heads,
                                                            head_dim=cfg.head_dim, length=n, seed=cfg.seed + n))
        rows += measure_length(q, k, v, methods, settings, repeats, ctx.device)
    return {
        "rows": rows,
        "settings": {
            "inputs": "gaussian_qkv, B=1, causal, forward only (no_grad)", "batch": 1,
            "heads": layouts[0][0], "kv_heads": layouts[0][1], "head_dim": cfg.head_dim,
            "head_layouts": [list(layout) for layout in layouts],
            "repeats": repeats, "warmup_length": warm, "timer": "time_call, 1 call per round, rounds interleaved"
            " with dense SDPA; selection/kernel split at a synchronised boundary inside the end-to-end call",
            "statistic": "median over rounds; ratio = method median / median of its paired dense calls",
            "backend_request": "auto", "dtype": str(q.dtype),
            "memory": "CUDA: max_memory_allocated - memory_allocated before; CPU: VmHWM - VmRSS before"
                      " (/proc/self/clear_refs reset, glibc mmap threshold 64 KiB during the call); one"
                      " untimed call after the timing rounds; extra bytes over the inputs, output included;"
                      " the selection alone in one more call, next to the bytes of its index tensor",
            "memory_unavailable": peak_memory_unavailable(ctx.device),
            "load_average_1min": {"before": load_before, "after": _load_average(), "cpu_count": os.cpu_count()},
            "methods": settings,
        },
    }

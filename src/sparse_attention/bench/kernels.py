"""Kernel benchmark: every sparse attention backend against dense SDPA, in one run.

For each (N, K, heads) point: random causal selections (``K`` keys per query drawn from
its past, shared by all heads unless ``selection`` says otherwise), then per backend:

1. a correctness check against the float64 reference at a small size with the same heads,
   ``K`` and dtype (outputs and q/k/v gradients, relative RMS error); a backend that fails
   it, or cannot run the inputs, is reported with the reason and **not timed**;
2. forward and forward+backward time (best of ``repeats`` after a warm-up, interleaved with
   dense SDPA so that drift hits both), peak memory of the forward pass, achieved GFLOP/s,
   the ideal ratio (dense FLOPs / sparse FLOPs) and the measured ratio (dense time /
   sparse time).

``peers`` adds rows for peer libraries from PyPI (:mod:`.peers`): each builds its own sparse
attention at settings matching ``K``, is timed the same way against the same dense SDPA row,
and is not checked for correctness (it computes a different attention; its row says so and
how many keys a query attends to).

FLOPs are counted, not measured: forward ``4 D`` per (head, valid edge) (``q.k`` and
``p v``); forward+backward ``3.5x`` that (backward = recomputed scores + 4 GEMMs, the
flash-attention convention). Dense counts its causal pairs the same way.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch

from ..ops.attention import backends as registered_backends
from ..ops.attention import choose_backend
from ..ops.dense import dense_attention
from ..ops.record import dispatch_record, machine_with_kernel
from ..ops.attention import sparse_attention
from ..utils.memory import peak_memory_bytes
from ..utils.timing import synchronize, time_call, time_interleaved
from .peers import measure_peer, resolve_peers

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: relative RMS error allowed against the float64 reference, per dtype.
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 5e-3}
BACKWARD_FLOP_FACTOR = 3.5


@dataclass
class KernelBenchConfig:
    """What ``sparse-attention bench kernels`` measures."""

    device: str = "cpu"
    lengths: tuple[int, ...] = (4096,)
    top_k: tuple[int, ...] = (256,)
    heads: tuple[tuple[int, int], ...] = ((16, 1),)
    head_dim: int = 64
    dtype: str = "float32"
    selection: str = "shared"
    backends: tuple[str, ...] = ()
    repeats: int = 3
    backward: bool = True
    check_length: int = 256
    indexer_heads: int = 0
    indexer_dim: int = 64
    seed: int = 0
    peers: tuple[str, ...] = ()
    points: list[tuple[int, int]] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {list(DTYPES)}, got {self.dtype!r}")
        if self.selection not in ("shared", "per_kv_head", "per_head"):
            raise ValueError(f"selection must be shared, per_kv_head or per_head, got {self.selection!r}")
        if len(self.top_k) not in (1, len(self.lengths)):
            raise ValueError("top_k: give one value, or one per length")
        for h, h_kv in self.heads:
            if h <= 0 or h_kv <= 0 or h % h_kv:
                raise ValueError(f"heads: {h}:{h_kv} must be positive with H a multiple of H_kv")
        ks = self.top_k * len(self.lengths) if len(self.top_k) == 1 else self.top_k
        self.points = list(zip(self.lengths, ks))
        for n, k in self.points:
            if n <= 0 or k <= 0:
                raise ValueError(f"lengths and top_k must be positive, got N={n}, K={k}")
        if self.repeats <= 0:
            raise ValueError(f"repeats must be positive, got {self.repeats}")
        if self.indexer_heads < 0 or self.indexer_dim <= 0:
            raise ValueError("indexer_heads must be >= 0 and indexer_dim positive")
        self.peers = resolve_peers(self.peers)


def causal_random_indices(b: int, h_sel: int, n: int, k: int, seed: int, device) -> torch.Tensor:
    """``[B, H_sel, N, K]``: for query ``t``, ``K`` distinct random keys of ``[0, t]``, ascending
    (as a top-k selection is: distinct, and sorted by most selectors). Queries with ``t + 1 < K``
    take keys ``0 .. t`` and repeat ``t`` in the remaining slots, so every slot is a valid causal
    edge and every query costs K keys.

    Sorted draws ``u_0 <= ... <= u_{K-1}`` from ``[0, t + 1 - K]`` plus ``0, 1, ..., K - 1`` are
    distinct, ascending and spread over ``[0, t]`` (one pass, no per-row permutation)."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(b, h_sel, n, k, generator=gen)
    span = (torch.arange(n, dtype=torch.float32)[:, None] + 2 - k).clamp(min=1)  # [N, 1] values per draw
    draws = (u * span).long().sort(dim=-1).values  # [B, H_sel, N, K], each in [0, span - 1]
    idx = draws + torch.arange(k)
    return idx.clamp(max=torch.arange(n)[:, None]).to(device)


def _inputs(cfg: KernelBenchConfig, n: int, k: int, h: int, h_kv: int, dtype, seed: int, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(1, h, n, cfg.head_dim, generator=gen)
    kk = torch.randn(1, h_kv, n, cfg.head_dim, generator=gen)
    v = torch.randn(1, h_kv, n, cfg.head_dim, generator=gen)
    q, kk, v = (t.to(cfg.device, dtype).requires_grad_(requires_grad) for t in (q, kk, v))
    h_sel = {"shared": 1, "per_kv_head": h_kv, "per_head": h}[cfg.selection]
    return q, kk, v, causal_random_indices(1, h_sel, n, min(k, n), seed + 1, cfg.device)


def _rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def correctness(cfg: KernelBenchConfig, backend: str, k: int, h: int, h_kv: int) -> dict[str, Any]:
    """Relative RMS error of outputs and q/k/v gradients against the float64 reference."""
    dtype = DTYPES[cfg.dtype]
    n = min(cfg.check_length, max(k, 16))
    q, kk, v, idx = _inputs(cfg, n, k, h, h_kv, dtype, cfg.seed + 7, requires_grad=True)
    out = sparse_attention(q, kk, v, idx, backend=backend)
    ref_in = [t.detach().double().requires_grad_() for t in (q, kk, v)]
    ref = sparse_attention(*ref_in, idx, backend="reference")
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(3)).to(out.device)
    grads = torch.autograd.grad(out, (q, kk, v), upstream.to(out.dtype))
    ref_grads = torch.autograd.grad(ref, ref_in, upstream.double())
    errors = {"out": _rel_rms(out, ref), **{f"d{name}": _rel_rms(g, r) for name, g, r in
                                             zip(("q", "k", "v"), grads, ref_grads)}}
    tol = TOLERANCE[dtype]
    return {"passed": all(e <= tol for e in errors.values()), "tolerance": tol, "errors": errors, "check_length": n}


def _fwd_bwd(fn: Callable[[], torch.Tensor], inputs: Iterable[torch.Tensor]) -> Callable[[], None]:
    inputs = list(inputs)

    def run() -> None:
        out = fn()
        # allow_unused: some peers ignore k (shared QK) or k and v (own projections)
        torch.autograd.grad(out, inputs, torch.ones_like(out), allow_unused=True)
    return run


def measure_point(cfg: KernelBenchConfig, n: int, k: int, h: int, h_kv: int) -> list[dict[str, Any]]:
    """Rows for dense SDPA and every backend at one (N, K, heads) point."""
    dtype = DTYPES[cfg.dtype]
    q, kk, v, idx = _inputs(cfg, n, k, h, h_kv, dtype, cfg.seed)
    edges = float(idx.shape[-1]) * n  # every slot is a valid causal edge
    pairs = n * (n + 1) / 2
    flop = 4 * cfg.head_dim * h
    dense_fwd_flops, sparse_fwd_flops = flop * pairs, flop * edges
    base = {"n": n, "top_k": k, "heads": f"{h}:{h_kv}", "dtype": cfg.dtype, "selection": cfg.selection,
            "ideal_ratio": dense_fwd_flops / sparse_fwd_flops, "keys_per_query": float(idx.shape[-1])}
    qg, kg, vg = (t.detach().requires_grad_() for t in (q, kk, v))

    def timed(fwd: Callable[[], torch.Tensor], grad_inputs) -> dict[str, Any]:
        with torch.no_grad():
            t_fwd = time_call(fwd, cfg.device, repeats=cfg.repeats)["min_ms"]
            _, peak = peak_memory_bytes(fwd, cfg.device)
        row = {"forward_ms": t_fwd, "forward_peak_mib": None if peak is None else peak / 2**20}
        if cfg.backward and grad_inputs is not None:
            row["forward_backward_ms"] = time_call(_fwd_bwd(fwd, grad_inputs), cfg.device,
                                                   repeats=cfg.repeats)["min_ms"]
        return row

    dense = {**base, "backend": "dense_sdpa", "status": "ok", "keys_per_query": (n + 1) / 2}
    rows = [dense]
    timed_rows, fwd_fns = [dense], [lambda: dense_attention(qg, kg, vg, causal=True)]
    names = cfg.backends or tuple(b.name for b in registered_backends())
    for name in names:
        row = {**base, "backend": name}
        rows.append(row)
        try:
            choose_backend(name, q, kk, v, idx, needs_grad=cfg.backward)
        except ValueError as err:
            row.update(status="unsupported", reason=str(err))
            continue
        check = correctness(cfg, name, k, h, h_kv)
        row["correctness"] = check
        if not check["passed"]:
            row["status"] = "failed correctness check (not timed)"
            continue
        timed_rows.append(row)
        fwd_fns.append(lambda name=name: sparse_attention(qg, kg, vg, idx, backend=name))
    # Dense SDPA and the backends that passed are timed in alternation (time_interleaved), so
    # that the machine's drift during the run does not favour one of them.
    with torch.no_grad():
        for row, timing, fn in zip(timed_rows, time_interleaved(fwd_fns, cfg.device, repeats=cfg.repeats), fwd_fns):
            _, peak = peak_memory_bytes(fn, cfg.device)
            row.update(forward_ms=timing["min_ms"], forward_peak_mib=None if peak is None else peak / 2**20)
    if cfg.backward:
        timings = time_interleaved([_fwd_bwd(fn, (qg, kg, vg)) for fn in fwd_fns], cfg.device, repeats=cfg.repeats)
        for row, timing in zip(timed_rows, timings):
            row["forward_backward_ms"] = timing["min_ms"]
    dense["forward_gflops"] = dense_fwd_flops / dense["forward_ms"] / 1e6
    for row in timed_rows[1:]:
        row["status"] = "ok"
        row["forward_gflops"] = sparse_fwd_flops / row["forward_ms"] / 1e6
        row["forward_speedup"] = dense["forward_ms"] / row["forward_ms"]
        if cfg.backward:
            row["forward_backward_speedup"] = dense["forward_backward_ms"] / row["forward_backward_ms"]
            row["forward_backward_gflops"] = BACKWARD_FLOP_FACTOR * sparse_fwd_flops / row["forward_backward_ms"] / 1e6
    for name in cfg.peers:
        rows.append(measure_peer(name, qg, kg, vg, k, timed, dense, base, cfg.backward))
    if cfg.indexer_heads:
        rows.extend(_dsa_end_to_end(cfg, n, k, q, kk, v, dense, base))
    synchronize(cfg.device)
    return rows


def selection_overlap(indices: torch.Tensor, reference: torch.Tensor, chunk: int = 1024) -> float:
    """Fraction of the reference's valid slots whose key ``indices`` also selects (rows of
    ``[..., N_q, K]``, ``-1`` = empty), computed in query chunks (no N x N mask at once)."""
    idx, ref = indices.reshape(-1, indices.shape[-1]), reference.reshape(-1, reference.shape[-1])
    n_k = int(max(idx.max(), ref.max())) + 2
    hits = total = 0
    for start in range(0, idx.shape[0], chunk):
        a, r = idx[start:start + chunk], ref[start:start + chunk]
        chosen = torch.zeros(a.shape[0], n_k, dtype=torch.bool).scatter_(1, a.clamp(min=-1) + 1, True)
        chosen[:, 0] = False  # column 0 collects the empty slots
        valid = r >= 0
        hits += int((chosen.gather(1, r.clamp(min=-1) + 1) & valid).sum())
        total += int(valid.sum())
    return hits / max(total, 1)


def _dsa_end_to_end(cfg: KernelBenchConfig, n: int, k: int, q, kk, v, dense: dict, base: dict) -> list[dict[str, Any]]:
    """Forward time of lightning-indexer scoring + top-k + sparse attention (backend auto), once
    per indexer precision; the bf16 row also reports how much of the fp32 selection it keeps."""
    from ..ops.topk.cpu import bf16_path
    from ..selection.dsa import dsa_select

    gen = torch.Generator().manual_seed(cfg.seed + 11)
    h_i, d_i = cfg.indexer_heads, cfg.indexer_dim
    index_q = torch.randn(1, h_i, n, d_i, generator=gen).to(cfg.device)
    index_k = torch.randn(1, n, d_i, generator=gen).to(cfg.device)
    weights = torch.rand(1, n, h_i, generator=gen).to(cfg.device)
    rows, reference = [], None
    for precision in ("float32", "bfloat16"):
        def select():
            return dsa_select(index_q, index_k, weights, top_k=k, causal=True, precision=precision)

        with torch.no_grad():
            total = time_call(lambda: sparse_attention(q, kk, v, select().indices), cfg.device,
                              repeats=cfg.repeats)["min_ms"]
            select_ms = time_call(select, cfg.device, repeats=cfg.repeats)["min_ms"]
            selection, select_peak = peak_memory_bytes(select, cfg.device)
        indices = selection.indices
        row = {**base, "backend": f"dsa end to end ({h_i}x{d_i} {precision} indexer + top-k + auto)",
               "status": "ok", "forward_ms": total, "selection_ms": select_ms,
               "forward_speedup": dense["forward_ms"] / total, "indexer_precision": precision,
               "selection_peak_mib": None if select_peak is None else select_peak / 2**20,
               "selection_scoring": selection.info["scoring"]}
        if precision == "bfloat16":
            row["bf16_path"] = bf16_path() if selection.info["scoring"] == "fused" else "torch"
            row["overlap_with_float32_selection"] = selection_overlap(indices, reference)
        reference = indices
        rows.append(row)
    return rows


def run_kernel_bench(cfg: KernelBenchConfig, progress: Callable[[Iterable, str], Iterable] = lambda x, d: x) -> dict:
    """Run every point; returns ``{"machine", "config", "rows"}`` (JSON-ready)."""
    rows = []
    points = [(n, k, h, h_kv) for n, k in cfg.points for h, h_kv in cfg.heads]
    for n, k, h, h_kv in progress(points, "bench"):
        rows.extend(measure_point(cfg, n, k, h, h_kv))
    config = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    return {"machine": machine_with_kernel(cfg.device), "config": config, "rows": rows, "dispatch": dispatch_record(),
            "flop_model": {"forward_per_edge_per_head": "4 * D", "backward_factor": BACKWARD_FLOP_FACTOR}}


#: Variables that hold PyTorch's own CPU kernels (SDPA's) to an instruction set, for the AVX2 emulation.
def describe_cpu_kernel(machine: dict) -> str:
    """One sentence on the kernel's build and the CPU, for tables ('' for results without it)."""
    c = machine.get("cpu_kernel")
    if not c:
        return (" CPU kernel build not recorded (written before builds per instruction-set level existed: `native`)."
                if machine.get("device") == "cpu" else "")
    caps = ", ".join(f"{k}={v}" for k, v in c.get("isa_caps", {}).items())
    emulated = f"; dense SDPA held to {c.get('torch_cpu_capability')} ({caps})" if caps else (
        f"; SDPA on {c.get('torch_cpu_capability')}")
    return (f" CPU kernel built for `{c.get('isa_level')}` ({', '.join(c.get('compiled_features', [])) or 'none'}),"
            f" CPU has {', '.join(c.get('cpu_flags', [])) or 'none of avx2/avx512/amx'}{emulated}.")


def _keys_per_query(r: dict) -> float:
    """Keys each query attends to; derived for JSON written before rows recorded it."""
    if r.get("keys_per_query") is not None:
        return r["keys_per_query"]
    return (r["n"] + 1) / 2 if r["backend"] == "dense_sdpa" else float(min(r["top_k"], r["n"]))


def markdown_table(results: dict) -> str:
    """The benchmark as a Markdown table (generated from the JSON); peer rows get a note
    below it with their library version and settings."""
    m = results["machine"]
    lines = [f"Machine: {m.get('device_name')} ({m.get('device')}), {m.get('threads')} threads, torch {m.get('torch')},"
             f" git {str(m.get('git_sha'))[:12]}.{describe_cpu_kernel(m)}", "",
             "| N | K | heads | dtype | backend | keys/query | fwd ms | fwd+bwd ms | fwd GFLOP/s | ideal x |"
             " fwd x dense | fwd+bwd x dense | peak MiB | status |",
             "|" + "---|" * 14]

    def f(x, digits=1):
        return "-" if x is None else (f"{x:.{digits}f}" if isinstance(x, float) else str(x))

    notes = []
    for r in results["rows"]:
        status = r["status"]
        if status == "unsupported" and r.get("reason"):
            status += ": " + r["reason"].split("cannot run these inputs: ", 1)[-1]
        if r.get("kind") == "peer":
            if status == "ok":
                status += " (peer: own attention, not checked)"
            elif status == "error":
                status += f": {r.get('reason')}"
            note = f"- `{r['backend']}` ({r['library']} {r.get('version') or 'not installed'}): {r.get('settings', '-')}"
            if note not in notes:
                notes.append(note)
        if r.get("selection_ms") is not None:
            status += f" (selection {r['selection_ms']:.0f} ms, {r.get('selection_scoring', 'chunked')}"
            if r.get("selection_peak_mib") is not None:
                status += f", peak {r['selection_peak_mib']:.0f} MiB"
            if r.get("overlap_with_float32_selection") is not None:
                status += (f", {r.get('bf16_path')}; keeps {100 * r['overlap_with_float32_selection']:.1f}% of the"
                           " float32 selection")
            status += ")"
        lines.append(f"| {r['n']} | {r['top_k']} | {r['heads']} | {r['dtype']} | {r['backend']} | "
                     f"{f(_keys_per_query(r), 0)} | "
                     f"{f(r.get('forward_ms'))} | {f(r.get('forward_backward_ms'))} | {f(r.get('forward_gflops'))} | "
                     f"{f(r.get('ideal_ratio'), 1)} | {f(r.get('forward_speedup'), 2)} | "
                     f"{f(r.get('forward_backward_speedup'), 2)} | {f(r.get('forward_peak_mib'), 1)} | {status} |")
    if notes:
        lines += ["", ("Peer libraries (each computes its own sparse attention, so no correctness check;"
                       " keys/query is approximate):"), *notes]
    return "\n".join(lines)

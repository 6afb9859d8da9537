"""Scalability: tables (time, phase split, peak memory; N x method, ratios to dense) and a plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .markdown import pivot, table
from .style import save, style

MIB = 2**20


def _cell(value: float | None, ratio: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" + ("" if ratio is None else f" ({ratio:.2f}x)")


def _mib(value: int | None) -> float | None:
    return None if value is None else value / MIB


def _summary(rows: list[dict[str, Any]]) -> str:
    """One computed sentence about the largest N: fastest sparse method and its ratio."""
    n = max(r["n"] for r in rows)
    sparse = [r for r in rows if r["n"] == n and r["method"] != "dense"]
    if not sparse:
        return ""
    best = min(sparse, key=lambda r: r["time_ratio"])
    worst = max(sparse, key=lambda r: r["time_ratio"])
    faster = [r["method"] for r in sparse if r["time_ratio"] < 1]
    verdict = (f"faster than dense there: {', '.join(faster)}" if faster
               else "no sparse method is faster than dense SDPA there")
    return (f"At N={n} the fastest sparse method end to end is {best['method']} at {best['time_ratio']:.2f}x the"
            f" time of dense SDPA and the slowest {worst['method']} at {worst['time_ratio']:.2f}x; {verdict}.")


def tables(section: dict[str, Any], results: dict[str, Any]) -> str:
    rows, s = section["rows"], section["settings"]
    backends = sorted({r["backend"] for r in rows if r["method"] != "dense"})
    memory_note = (f"Peak memory unavailable: {s['memory_unavailable']}." if s.get("memory_unavailable")
                   else f"Peak memory: {s['memory']}.")
    if "reference" in backends:
        memory_note += (" The reference backend gathers keys and values in query chunks of a fixed element"
                        " budget, so its peak memory depends little on N.")
    load = s.get("load_average_1min") or {}
    if load.get("before") is not None:
        memory_note += (f" Machine load (1-minute average) {load['before']:.1f} before and {load['after']:.1f} after"
                        f" the run on {load['cpu_count']} cores: a load above the core count means other jobs"
                        " shared the cores, which inflates the times and can distort the ratios.")
    intro = (f"Forward time of each method next to dense SDPA, measured in one run ({s['inputs']};"
             f" H={s['heads']}, H_kv={s['kv_heads']}, D={s['head_dim']}, {s['dtype']}). {s['repeats']} rounds per N;"
             f" {s['timer']}; {s['statistic']}. Sparse kernel requested with backend=\"{s['backend_request']}\","
             f" which chose: {', '.join(backends) or '-'}. {memory_note}")
    parts = ["## Scalability", "", intro, "", _summary(rows), ""]
    ns, methods, e2e = pivot(rows, "n", "method", "end_to_end_ms")
    _, _, ratio = pivot(rows, "n", "method", "time_ratio")
    parts += ["**End-to-end forward time, ms (ratio to dense SDPA)**", "",
              table(["N", *methods], [[n] + [_cell(e2e[n, m], ratio[n, m]) for m in methods] for n in ns]), ""]
    sparse = [m for m in methods if m != "dense"]
    _, _, sel = pivot(rows, "n", "method", "selection_ms")
    _, _, ker = pivot(rows, "n", "method", "kernel_ms")
    _, _, ker_ratio = pivot(rows, "n", "method", "kernel_ratio")
    parts += ["**Phases, ms: selection + sparse kernel (kernel alone as a ratio to dense SDPA)**", "",
              table(["N", *sparse], [[n] + [f"{sel[n, m]:.1f} + {ker[n, m]:.1f} ({ker_ratio[n, m]:.2f}x)"
                                            for m in sparse] for n in ns]), ""]
    _, _, peak = pivot(rows, "n", "method", "peak_bytes")
    _, _, mem_ratio = pivot(rows, "n", "method", "memory_ratio")
    parts += ["**Peak memory of the forward call, MiB above the inputs (ratio to dense SDPA)**", "",
              table(["N", *methods], [[n] + [_cell(_mib(peak[n, m]), mem_ratio[n, m]) for m in methods]
                                      for n in ns]), ""]
    return "\n".join(parts)


def _log_n_axis(ax, ns: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.minorticks_off()
    ax.set_xlabel("sequence length N")


def plots(section: dict[str, Any], out_dir: Path) -> list[str]:
    import matplotlib.pyplot as plt

    rows = section["rows"]
    ns, methods, e2e = pivot(rows, "n", "method", "end_to_end_ms")
    _, _, ratio = pivot(rows, "n", "method", "time_ratio")
    _, _, peak = pivot(rows, "n", "method", "peak_bytes")
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    for method in methods:
        kw = style(method)
        kw.update(linestyle="--" if method == "dense" else "-", linewidth=2 if method == "dense" else 1.3)
        axes[0].plot(ns, [e2e[n, method] for n in ns], **kw)
        if method != "dense":
            axes[1].plot(ns, [ratio[n, method] for n in ns], **kw)
        values = [(n, _mib(peak[n, method])) for n in ns if peak[n, method] is not None]
        if values:
            axes[2].plot([n for n, _ in values], [m for _, m in values], **kw)
    axes[0].set(yscale="log", ylabel="forward time, ms (log)", title="End-to-end forward time (selection + kernel)")
    axes[1].axhline(1.0, color="black", linewidth=0.8, linestyle=":", label="dense = 1")
    axes[1].set(yscale="log", ylabel="time / dense SDPA time (log)", title="Time ratio to dense SDPA (same run)")
    axes[2].set(ylabel="peak memory above inputs, MiB (log)", title="Peak memory of the forward call")
    if any(v is not None for v in peak.values()):
        axes[2].set_yscale("log")
    else:
        reason = section["settings"].get("memory_unavailable") or "not measured"
        axes[2].text(0.5, 0.5, f"unavailable:\n{reason}", ha="center", va="center", transform=axes[2].transAxes,
                     wrap=True)
    for ax in axes:
        _log_n_axis(ax, ns)
        ax.grid(True, which="major", alpha=0.3)
    axes[0].legend(fontsize=8, ncol=2)
    axes[1].legend(fontsize=8, ncol=2)
    backends = ", ".join(sorted({r["backend"] for r in rows if r["method"] != "dense"}))
    fig.suptitle(f"Scalability (sparse kernel backend: {backends}; dense: SDPA)", fontsize=11)
    return [save(fig, out_dir, "scalability.png")]

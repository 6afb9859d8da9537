"""Scalability: tables (time, phase split, peak memory, selection memory; N x method, ratios to
dense) per head layout, and a plot per layout."""

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


def _layouts(section: dict[str, Any]) -> list[tuple[int, int]]:
    """Head layouts ``(H, H_kv)`` in the order measured (results before layouts: the settings' one)."""
    s = section["settings"]
    default = (s["heads"], s["kv_heads"])
    seen = [(r.get("heads", default[0]), r.get("kv_heads", default[1])) for r in section["rows"]]
    return list(dict.fromkeys(seen)) or [default]


def _rows_of(section: dict[str, Any], layout: tuple[int, int]) -> list[dict[str, Any]]:
    s = section["settings"]
    return [r for r in section["rows"] if (r.get("heads", s["heads"]), r.get("kv_heads", s["kv_heads"])) == layout]


def _layout_name(layout: tuple[int, int]) -> str:
    h, h_kv = layout
    kind = "MQA" if h_kv == 1 and h > 1 else ("MHA" if h == h_kv else "GQA")
    return f"H={h}, H_kv={h_kv} ({kind} {h}:{h_kv})"


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
    layouts = _layouts(section)
    shape = (f"H={s['heads']}, H_kv={s['kv_heads']}" if len(layouts) == 1
             else "head layouts " + ", ".join(f"{h}:{h_kv}" for h, h_kv in layouts))
    intro = (f"Forward time of each method next to dense SDPA, measured in one run ({s['inputs']};"
             f" {shape}, D={s['head_dim']}, {s['dtype']}). {s['repeats']} rounds per N;"
             f" {s['timer']}; {s['statistic']}. Sparse kernel requested with backend=\"{s['backend_request']}\","
             f" which chose: {', '.join(backends) or '-'}. {memory_note}")
    parts = ["## Scalability", "", intro, ""]
    for layout in layouts:
        if len(layouts) > 1:
            parts += [f"### {_layout_name(layout)}", ""]
        parts += _layout_tables(_rows_of(section, layout))
    return "\n".join(parts)


def _layout_tables(rows: list[dict[str, Any]]) -> list[str]:
    """Summary sentence and tables of one head layout."""
    parts = [_summary(rows), ""]
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
    measured = [r for r in rows if "selection_peak_bytes" in r]
    if measured:
        _, _, sel_peak = pivot(measured, "n", "method", "selection_peak_bytes")
        _, _, sel_ratio = pivot(measured, "n", "method", "selection_memory_ratio")
        parts += ["**Peak memory of the selection alone, MiB (ratio to the index tensor it returns)**", "",
                  table(["N", *sparse], [[n] + [_cell(_mib(sel_peak[n, m]), sel_ratio[n, m]) for m in sparse]
                                         for n in ns]), ""]
    return parts


def _log_n_axis(ax, ns: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.minorticks_off()
    ax.set_xlabel("sequence length N")


def plots(section: dict[str, Any], out_dir: Path) -> list[str]:
    """One figure per head layout: ``scalability.png`` for the first, ``scalability_HxH_kv.png`` for others."""
    layouts = _layouts(section)
    return [_plot_layout(section, _rows_of(section, layout), layout, out_dir,
                         "scalability.png" if i == 0 else f"scalability_{layout[0]}x{layout[1]}.png",
                         titled=len(layouts) > 1)
            for i, layout in enumerate(layouts)]


def _plot_layout(section: dict[str, Any], rows: list[dict[str, Any]], layout: tuple[int, int], out_dir: Path,
                 name: str, titled: bool) -> str:
    import matplotlib.pyplot as plt

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
    title = f"Scalability (sparse kernel backend: {backends}; dense: SDPA)"
    fig.suptitle(f"{title}, {_layout_name(layout)}" if titled else title, fontsize=11)
    return save(fig, out_dir, name)

"""Energy proxy: tables (FLOPs, bytes, estimated energy; N x method, ratios to dense) and a plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .markdown import pivot, table
from .style import save, style


def _grid(rows: list[dict[str, Any]], key: str, ratio_key: str, scale: float, digits: int) -> tuple[list, list, list]:
    ns, methods, values = pivot(rows, "n", "method", key)
    _, _, ratios = pivot(rows, "n", "method", ratio_key)
    body = [[n] + [f"{values[n, m] / scale:.{digits}f} ({ratios[n, m]:.2f}x)" for m in methods] for n in ns]
    return ns, methods, body


def _summary(rows: list[dict[str, Any]]) -> str:
    """Computed sentence: at the largest N, the selection's share of each method's FLOPs."""
    n = max(r["n"] for r in rows)
    shares = [f"{r['method']} {r['selection_flops'] / r['flops']:.0%}" for r in rows
              if r["n"] == n and r["method"] != "dense" and r["flops"]]
    return f"Share of the selection in each method's FLOPs at N={n}: {', '.join(shares)}." if shares else ""


def tables(section: dict[str, Any], results: dict[str, Any]) -> str:
    rows, s = section["rows"], section["settings"]
    intro = (f"Counted FLOPs and bytes of selection plus attention per forward pass ({s['inputs']}; H={s['heads']},"
             f" H_kv={s['kv_heads']}, D={s['head_dim']}; {s['dtype_bytes']}-byte elements, {s['index_bytes']}-byte"
             f" indices), from the cost model documented in `{s['cost_model']}`. Dense attention counts every"
             " causal pair (SDPA); sparse methods count their selected edges plus the selection's own work."
             f" Energy model: {s['energy_model']}, with {s['joules_per_flop'] * 1e12:.2f} pJ per FLOP"
             " (mean of a 32-bit float add,"
             f" {s['pj_fp32_add']} pJ, and multiply, {s['pj_fp32_mult']} pJ: the two FLOPs of an FMA) and"
             f" {s['joules_per_byte'] * 1e12:.0f} pJ per byte (32-bit DRAM read, {s['pj_dram_read_32bit']:.0f} pJ)"
             f" from {s['citation']}. These are model estimates, not measurements of this machine.")
    parts = ["## Energy proxy", "", intro, "", _summary(rows), ""]
    if s.get("not_modelled"):
        parts += [f"Not counted (their specs have no cost model): {', '.join(s['not_modelled'])}.", ""]
    for title, key, ratio, scale, digits in (
            ("FLOPs, GFLOP (ratio to dense)", "flops", "flops_ratio", 1e9, 3),
            ("Bytes moved, MB, no-reuse model (ratio to dense)", "bytes", "bytes_ratio", 1e6, 1),
            ("Estimated energy, mJ, upper bound: no-reuse bytes at DRAM cost (ratio to dense)", "energy_j",
             "energy_ratio", 1e-3, 2),
            ("Estimated energy, mJ, lower bound: compulsory bytes only (ratio to dense)", "energy_min_j",
             "energy_min_ratio", 1e-3, 3)):
        _, methods, body = _grid(rows, key, ratio, scale, digits)
        parts += [f"**{title}**", "", table(["N", *methods], body), ""]
    ns, methods, sel = pivot(rows, "n", "method", "selection_flops")
    sparse = [m for m in methods if m != "dense"]
    parts += ["**Selection FLOPs, GFLOP (the part of the FLOPs above spent choosing keys)**", "",
              table(["N", *sparse], [[n] + [f"{sel[n, m] / 1e9:.3f}" for m in sparse] for n in ns]), ""]
    return "\n".join(parts)


def plots(section: dict[str, Any], out_dir: Path) -> list[str]:
    import matplotlib.pyplot as plt

    rows = section["rows"]
    ns, methods, _ = pivot(rows, "n", "method", "flops")
    panels = (("flops", 1e9, "GFLOP per forward pass (log)", "FLOPs: selection + attention"),
              ("energy_j", 1e-3, "estimated energy, mJ (log)", "Energy, upper bound (no-reuse bytes)"),
              ("energy_min_j", 1e-3, "estimated energy, mJ (log)", "Energy, lower bound (compulsory bytes)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(16, 4.6))
    for ax, (key, scale, ylabel, title) in zip(axes, panels):
        _, _, values = pivot(rows, "n", "method", key)
        for method in methods:
            kw = style(method)
            kw.update(linestyle="--" if method == "dense" else "-", linewidth=2 if method == "dense" else 1.3)
            ax.plot(ns, [values[n, method] / scale for n in ns], **kw)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.minorticks_off()
        ax.set(xlabel="sequence length N", ylabel=ylabel, title=title)
        ax.grid(True, which="major", alpha=0.3)
    axes[0].legend(fontsize=8, ncol=2)
    s = section["settings"]
    fig.suptitle(f"Energy proxy: {s['joules_per_flop'] * 1e12:.1f} pJ/FLOP, {s['joules_per_byte'] * 1e12:.0f} pJ/byte"
                 " (Horowitz, ISSCC 2014, 45 nm); counted, not measured", fontsize=11)
    return [save(fig, out_dir, "energy.png")]

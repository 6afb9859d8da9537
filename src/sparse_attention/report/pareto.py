"""Pareto frontier: quality (cosine, recall) against cost (measured time, counted FLOPs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .markdown import fmt, table
from .style import save, style

QUALITIES = (("cosine", "output cosine vs dense"), ("recall", "attention-mass recall"))
#: (row key, short name, axis label)
COSTS = (("total_ms", "time", "time: selection + kernel (ms)"),
         ("flops", "counted FLOPs", "counted FLOP: selection + attention"))


def pareto_front(rows: list[dict[str, Any]], cost: str, quality: str) -> list[int]:
    """Indices of the non-dominated rows (lower ``cost`` and higher ``quality`` are better).

    A row is dominated when another row is at least as good in both and strictly better in
    one. Rows without the cost (a method without a cost model has no FLOPs) take no part.
    Returned in increasing cost.
    """
    front = []
    for i, r in enumerate(rows):
        if r[cost] is None:
            continue
        dominated = any(
            o[cost] <= r[cost] and o[quality] >= r[quality] and (o[cost] < r[cost] or o[quality] > r[quality])
            for j, o in enumerate(rows) if j != i and o[cost] is not None)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (rows[i][cost], -rows[i][quality]))


def _label(row: dict[str, Any]) -> str:
    params = ", ".join(f"{k}={v}" for k, v in row["params"].items()) or "-"
    return f"{row['method']} ({params})"


def tables(section: dict[str, Any], results: dict[str, Any]) -> str:
    s, rows, dense = section["settings"], section["rows"], section["dense"]
    t = s["timing"]
    fronts = {(q, c): set(pareto_front(rows, c, q)) for q, _ in QUALITIES for c, _, _ in COSTS}
    parts = ["## Pareto frontier: quality against cost", "",
             f"Every method at several settings, N={s['n']}, causal, clustered synthetic q/k/v, {s['heads']}:"
             f"{s['kv_heads']} heads, D={s['head_dim']}. Time = selection + sparse kernel ({t['statistic']} of"
             f" {t['repeats']} run(s) after {t['warmup']} warm-up, {t['threads']} threads, {t['device']}), as a"
             f" multiple of dense SDPA ({dense['time_ms']:.1f} ms) measured in the same process. FLOPs are counted"
             f" ({s['flops']}); dense = {dense['flops'] / 1e9:.3f} GFLOP. Pareto columns name the quality"
             " measures for which the setting is non-dominated (no other setting is at least as cheap and at"
             " least as good) against time / against FLOPs. * = the method's suite default.", ""]
    header = ["method", "settings", "edges/query", "recall", "cosine", "select ms", "kernel ms", "x dense time",
              "GFLOP", "x dense FLOPs", "Pareto (time)", "Pareto (FLOPs)"]
    body = []
    for i, r in enumerate(rows):
        on = {c: ", ".join(q for q, _ in QUALITIES if i in fronts[q, c]) or "-" for c, _, _ in COSTS}
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "-"
        body.append([r["method"] + ("*" if r["is_default"] else ""), params, f"{r['edges_per_query']:.1f}",
                     r["recall"], f"{r['cosine']:.4f}", f"{r['select_ms']:.1f}", f"{r['kernel_ms']:.1f}",
                     f"{r['time_ratio']:.2f}", fmt(r["flops"] and r["flops"] / 1e9), fmt(r["flops_ratio"]),
                     on["total_ms"], on["flops"]])
    parts += [table(header, body), ""]
    for q, q_title in QUALITIES:
        for c, c_short, _ in COSTS:
            names = [_label(rows[i]) for i in pareto_front(rows, c, q)]
            parts.append(f"- Frontier of {q_title} against {c_short}: " + "; ".join(names) + ".")
    return "\n".join(parts) + "\n"


def plots(section: dict[str, Any], out_dir: Path) -> list[str]:
    import matplotlib.pyplot as plt

    s, rows = section["settings"], section["rows"]
    fig, axes = plt.subplots(len(QUALITIES), len(COSTS), figsize=(13, 9))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for row_axes, (q, q_title) in zip(axes, QUALITIES):
        for ax, (c, c_short, c_title) in zip(row_axes, COSTS):
            for method in methods:
                kw = style(method)
                mine = [r for r in rows if r["method"] == method and r[c] is not None]
                ax.scatter([r[c] for r in mine], [r[q] for r in mine], color=kw["color"], marker=kw["marker"],
                           label=method, s=[70 if r["is_default"] else 30 for r in mine],
                           edgecolors=["black" if r["is_default"] else "none" for r in mine], zorder=3)
            front = [rows[i] for i in pareto_front(rows, c, q)]
            # Staircase: the best quality reachable at each cost.
            ax.step([r[c] for r in front], [r[q] for r in front], where="post", color="black", linewidth=1,
                    alpha=0.6, zorder=2)
            ax.scatter([r[c] for r in front], [r[q] for r in front], s=220, facecolors="none", edgecolors="black",
                       linewidths=1, label="Pareto-optimal (staircase)", zorder=4)
            ax.set_xscale("log")
            ax.set_xlabel(c_title + ", log scale")
            ax.set_ylabel(q_title)
            ax.grid(True, which="both", alpha=0.3)
            ax.set_title(f"{q_title} vs {c_short}, N={s['n']}, causal", fontsize=9)
    axes[0][0].legend(fontsize=8, title="large, outlined = suite default", title_fontsize=7, loc="best")
    return [save(fig, out_dir, "pareto.png")]

"""Needle retrieval: tables (cosine and selected rate, N x method) and a bar plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .markdown import pivot, table
from .style import save, style

_CONSTRUCTIONS = {
    "seed": "seed construction (needle key 10x the noise norm)",
    "fair": "fair construction (needle of ordinary norm, 8 distractors at cos 0.8)",
}


def _rows(section, construction, depth_class):
    return [r for r in section["rows"] if r["construction"] == construction and r["depth_class"] == depth_class]


def tables(section: dict[str, Any], results: dict[str, Any]) -> str:
    s = section["settings"]
    parts = ["## Needle retrieval", "",
             "Cosine between the last query's output and the needle value, and (in brackets) the rate at which"
             " the needle is in the method's selection. Needles beyond the local window sit at depths"
             f" {list(s['beyond_fractions'])} of the sequence; the inside-window needle at {s['inside_position']}."
             f" Fair construction: query {s['fair_query_scale']} sqrt(D) along the needle,"
             f" {s['fair_distractors']} distractors at cos {s['fair_distractor_cos']}.", ""]
    for construction in ("seed", "fair"):
        for depth_class in ("beyond_window", "inside_window"):
            rows = _rows(section, construction, depth_class)
            if not rows:
                continue
            ns, methods, cos = pivot(rows, "n", "method", "cosine")
            _, _, rate = pivot(rows, "n", "method", "selected_rate")
            body = [[n] + [f"{cos[n, m]:.3f} ({rate[n, m]:.2f})" for m in methods] for n in ns]
            parts += [f"**{_CONSTRUCTIONS[construction]}, needle {depth_class.replace('_', ' ')}**", "",
                      table(["N", *methods], body), ""]
    return "\n".join(parts)


def plots(section: dict[str, Any], out_dir: Path) -> list[str]:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, construction in zip(axes, ("seed", "fair")):
        rows = _rows(section, construction, "beyond_window")
        ns, methods, cos = pivot(rows, "n", "method", "cosine")
        width = 0.8 / len(methods)
        for i, method in enumerate(methods):
            xs = [j + i * width for j in range(len(ns))]
            kw = style(method)
            ax.bar(xs, [cos[n, method] for n in ns], width, color=kw["color"], label=method)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(ns))], [str(n) for n in ns])
        ax.set_xlabel("sequence length N")
        ax.set_title(_CONSTRUCTIONS[construction] + "\nneedle beyond the local window", fontsize=9)
        ax.axhline(0, color="black", linewidth=0.5)
    axes[0].set_ylabel("cosine(output, needle value)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return [save(fig, out_dir, "needle.png")]

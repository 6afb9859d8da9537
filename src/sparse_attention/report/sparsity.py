"""Sparsity: tables per mode and method, fitted exponents, and edges/query against N."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .markdown import fmt, table
from .style import save, style


def tables(section: dict[str, Any], results: dict[str, Any]) -> str:
    parts = ["## Sparsity", "",
             "Selections on Gaussian q/k. Edges are valid (query, key) pairs per attention matrix; sparsity is"
             " against N^2, causal sparsity against the pairs dense causal attention computes. The exponent is"
             " the least-squares slope of log(edges/query) against log(N) (the seed study claims 0.5 for SSA).", ""]
    for mode in ("noncausal", "causal"):
        rows = [r for r in section["rows"] if r["mode"] == mode]
        if not rows:
            continue
        body = [[r["method"], r["n"], fmt(r["clusters"], 1), f"{r['edges']:,.0f}", f"{100 * r['sparsity']:.1f}%",
                 f"{100 * r['causal_sparsity']:.1f}%", f"{r['edges_per_query']:.1f}"] for r in rows]
        order = list(dict.fromkeys(r["method"] for r in rows))
        body.sort(key=lambda row: (order.index(row[0]), row[1]))
        parts += [f"**{mode.replace('noncausal', 'non-causal')}**", "",
                  table(["method", "N", "clusters", "edges", "sparsity", "causal sparsity", "edges/query"], body), ""]
    exp_rows = [[e["method"], e["mode"], fmt(e["exponent"], 2)] for e in section["exponents"]]
    parts += ["**Fitted exponent a in edges/query ~ N^a**", "", table(["method", "mode", "a"], exp_rows), ""]
    return "\n".join(parts)


def plots(section: dict[str, Any], out_dir: Path) -> list[str]:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    exponents = {(e["mode"], e["method"]): e["exponent"] for e in section["exponents"]}
    for ax, mode in zip(axes, ("noncausal", "causal")):
        rows = [r for r in section["rows"] if r["mode"] == mode]
        for method in dict.fromkeys(r["method"] for r in rows):
            sub = [r for r in rows if r["method"] == method]
            kw = style(method)
            a = exponents.get((mode, method))
            kw["label"] = f"{method} (a={a:.2f})" if a is not None else method
            ax.plot([r["n"] for r in sub], [r["edges_per_query"] for r in sub], **kw)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length N")
        ax.set_title(f"edges per query ({mode.replace('noncausal', 'non-causal')})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("keys attended per query")
    return [save(fig, out_dir, "sparsity.png")]

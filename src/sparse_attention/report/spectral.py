"""Spectral preservation: per-source tables (mean over heads) and spectra / error plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .markdown import table
from .style import save, style

_SOURCES = {
    "clustered": "clustered q/k (structured attention)",
    "gaussian": "Gaussian q/k (near-uniform attention, a worst case)",
}


def head_means(section: dict[str, Any], source: str) -> list[dict[str, Any]]:
    """One row per method of ``source``: every numeric metric averaged over heads, plus its min and max."""
    rows = [r for r in section["rows"] if r["source"] == source]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    out = []
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        keys = [k for k, v in mine[0].items() if isinstance(v, float)]
        row: dict[str, Any] = {"method": method, "heads": len(mine)}
        for key in keys:
            values = [r[key] for r in mine]
            row[key] = sum(values) / len(values)
            row[key + ":min"], row[key + ":max"] = min(values), max(values)
        out.append(row)
    return out


def tables(section: dict[str, Any], results: dict[str, Any]) -> str:
    s = section["settings"]
    ranks = s["ranks"]
    capped = {m: p for m, p in s["methods"].items() if "window" in p or "top_k" in p}
    budgets = ", ".join(f"{m} {p.get('window', p.get('top_k'))}" for m, p in capped.items())
    parts = ["## Spectral preservation", "",
             f"Causal attention probability matrices at N={s['n']} ({s['heads']} heads, D={s['head_dim']}): dense"
             " `A` against each method's `A_s` (softmax over the selected keys, zero elsewhere), SVD in"
             f" {s['svd_dtype']}, values averaged over the {s['heads']} heads. Spectral error ="
             " `||A - A_s||_2 / ||A||_2`; Frobenius error likewise; `sv err@r` = relative error of the top-r"
             " singular values; `overlap@r` = `||U_r^T U_s,r||_F^2 / r` of the top-r left (query-side) / right"
             f" (key-side) singular vectors (1 = same subspace, r/N = unrelated). Fixed budgets are capped at"
             f" N x {s['budget_fraction']} keys at this small N ({budgets or 'none'}).", ""]
    header = ["method", "edges/query", "recall", "spectral err", "Frobenius err", "stable rank"]
    for r in ranks:
        header += [f"sv err@{r}", f"overlap@{r} (L / R)"]
    for source in s["sources"]:
        body = []
        for row in head_means(section, source):
            cells = [row["method"], f"{row['edges_per_query']:.1f}", row["recall"], row["spectral_norm_error"],
                     row["frobenius_error"], f"{row['stable_rank']:.1f}"]
            for r in ranks:
                cells += [row[f"sv_error@{r}"], f"{row[f'overlap_left@{r}']:.3f} / {row[f'overlap_right@{r}']:.3f}"]
            body.append(cells)
        parts += [f"**{_SOURCES.get(source, source)}**", "", table(header, body), ""]
    return "\n".join(parts)


def _grouped_bars(ax, section: dict[str, Any], key: str, ylabel: str, title: str) -> None:
    """Bars of ``key`` per method, one group per source, whiskers from the min to the max over heads."""
    sources = section["settings"]["sources"]
    means = {source: {r["method"]: r for r in head_means(section, source)} for source in sources}
    methods = list(means[sources[0]])
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        xs = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(sources))]
        mid = [means[src][method][key] for src in sources]
        low = [m - means[src][method][key + ":min"] for m, src in zip(mid, sources)]
        high = [means[src][method][key + ":max"] - m for m, src in zip(mid, sources)]
        ax.bar(xs, mid, width, color=style(method)["color"], label=method, yerr=[low, high], capsize=2,
               error_kw={"linewidth": 0.8})
    ax.set_xticks(range(len(sources)), [_SOURCES.get(s, s).split(" (")[0] for s in sources])
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)


def plots(section: dict[str, Any], out_dir: Path) -> list[str]:
    import matplotlib.pyplot as plt

    s = section["settings"]
    source = s["sources"][0]
    spectra = section["spectra"][source]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    ax = axes[0]
    for method, values in spectra.items():
        kw = style(method)
        ax.plot(range(1, len(values) + 1), [max(v, 1e-16) for v in values], color=kw["color"], label=method,
                linewidth=2.5 if method == "dense" else 1.2, linestyle="--" if method == "dense" else "-",
                zorder=5 if method == "dense" else 3)  # dense on top: the others should hide under it
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("singular value index i")
    ax.set_ylabel(r"singular value $\sigma_i$")
    ax.set_title(f"Spectrum of the attention matrix, head {s['plot_head']},\n{_SOURCES.get(source, source)},"
                 f" N={s['n']}", fontsize=9)
    ax.legend(fontsize=8, ncol=2)  # the bar panels share these colours
    _grouped_bars(axes[1], section, "spectral_norm_error", r"$\|A - A_s\|_2 \,/\, \|A\|_2$",
                  "Relative spectral-norm error\n(mean over heads, whiskers: min-max)")
    r = max(s["ranks"])
    _grouped_bars(axes[2], section, f"overlap_left@{r}", rf"$\|U_{{{r}}}^T U_{{s,{r}}}\|_F^2 \,/\, {r}$",
                  f"Top-{r} left singular subspace overlap\n(1 = preserved; mean over heads, whiskers: min-max)")
    axes[2].set_ylim(0, 1.05)
    return [save(fig, out_dir, "spectral.png")]

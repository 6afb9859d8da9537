"""SSA ablation: grids (cluster count x clusters per query) as tables and heatmaps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .markdown import pivot, table
from .style import save

#: (row key, title, colour map, decimals)
METRICS = (
    ("recall", "attention-mass recall", "viridis", 3),
    ("cosine", "output cosine vs dense", "viridis", 4),
    ("causal_sparsity", "causal sparsity (1 - edges / causal pairs)", "magma", 3),
)


def _grid(section: dict[str, Any], key: str) -> tuple[list[str], list[int], dict]:
    """``(n_clusters labels, clusters_per_query values, {(label, cpq): value})``."""
    return pivot(section["rows"], "n_clusters_label", "clusters_per_query", key)


def _default_cell(section: dict[str, Any]) -> tuple[str, int]:
    d = section["settings"]["seed_default"]
    label = next(r["n_clusters_label"] for r in section["rows"] if r["n_clusters"] == d["n_clusters"])
    return label, d["clusters_per_query"]


def tables(section: dict[str, Any], results: dict[str, Any]) -> str:
    s = section["settings"]
    default = _default_cell(section)
    data = s["clustered_qkv"]
    parts = ["## SSA ablation: cluster count and clusters per query", "",
             f"SSA at N={s['n']}, causal, clustered synthetic q/k/v ({data['n_clusters']} true clusters per KV"
             f" head, spread {data['spread']}, sharpness {data['sharpness']}), {s['heads']}:{s['kv_heads']}"
             f" heads, D={s['head_dim']}. Rows: k-means clusters per causal prefix (`sqrt` ="
             f" {s['default_rule']}); columns: clusters each query reads. The seed's default"
             f" (n_clusters={default[0]}, clusters_per_query={default[1]}) is marked with *.", ""]
    labels, cpqs, edges = _grid(section, "edges_per_query")
    for key, title, _, digits in METRICS:
        _, _, cells = _grid(section, key)
        body = []
        for label in labels:
            row = [label]
            for c in cpqs:
                mark = "*" if (label, c) == default else ""
                row.append(f"{cells[label, c]:.{digits}f}{mark}")
            body.append(row)
        parts += [f"**{title}**", "", table(["n_clusters \\ clusters/query", *map(str, cpqs)], body), ""]
    body = [[label] + [f"{edges[label, c]:.1f}" for c in cpqs] for label in labels]
    parts += ["**edges per query**", "", table(["n_clusters \\ clusters/query", *map(str, cpqs)], body), ""]
    return "\n".join(parts)


def plots(section: dict[str, Any], out_dir: Path) -> list[str]:
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    s = section["settings"]
    default = _default_cell(section)
    fig, axes = plt.subplots(1, len(METRICS), figsize=(5.2 * len(METRICS), 4.3))
    for ax, (key, title, cmap, digits) in zip(axes, METRICS):
        labels, cpqs, cells = _grid(section, key)
        values = [[cells[label, c] for c in cpqs] for label in labels]
        flat = [v for row in values for v in row]
        image = ax.imshow(values, cmap=cmap, vmin=min(flat), vmax=max(flat), aspect="auto")
        fig.colorbar(image, ax=ax, fraction=0.046)
        for i, row in enumerate(values):
            for j, value in enumerate(row):
                # Dark text on the bright end of the colour map, light text on the dark end.
                bright = (value - min(flat)) > 0.6 * (max(flat) - min(flat) or 1)
                ax.text(j, i, f"{value:.{digits}f}", ha="center", va="center", fontsize=8,
                        color="black" if bright else "white")
        if default[0] in labels and default[1] in cpqs:
            i, j = labels.index(default[0]), cpqs.index(default[1])
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
        ax.set_xticks(range(len(cpqs)), [str(c) for c in cpqs])
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("clusters per query")
        ax.set_ylabel("k-means clusters (sqrt = seed rule)")
        ax.set_title(f"SSA {title}\nN={s['n']}, causal, clustered q/k/v (red: seed default)", fontsize=9)
    return [save(fig, out_dir, "ablation.png")]

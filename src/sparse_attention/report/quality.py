"""Output quality: a table per source, per-layer recall on real attention, and a bar plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .markdown import fmt, pivot, table
from .style import save, style

#: (source, causal) panels in report order, with their labels.
PANELS = (("gaussian", True, "Gaussian, causal"), ("clustered", True, "clustered, causal"),
          ("real", False, "real, bidirectional"), ("real", True, "real, causal mask"))


def _rows(rows: list[dict], source: str, causal: bool) -> list[dict]:
    return [r for r in rows if r["source"] == source and r["causal"] == causal]


def _effective(section: dict, source: str, causal: bool) -> float | None:
    """Mean effective keys (exp entropy of dense rows) of a source, over its groups."""
    values = [p["effective_keys"] for p in section.get("profiles", [])
              if p["source"] == source and p["causal"] == causal]
    return sum(values) / len(values) if values else None


def _visible_keys(n: int, causal: bool) -> float:
    """Mean number of keys a query sees under dense attention."""
    return (n + 1) / 2 if causal else float(n)


def _source_line(section: dict, source: str, causal: bool, label: str, n: int) -> str:
    eff = _effective(section, source, causal)
    spread = "" if eff is None else (f" Dense attention spreads over {eff:.0f} effective keys (exp of the row"
                                     f" entropy) of {_visible_keys(n, causal):.0f} visible on average.")
    return f"**{label}, N = {n}.**{spread}"


def tables(section: dict[str, Any], results: dict[str, Any]) -> str:
    s = section["settings"]
    parts = ["## Output quality", "",
             "Every method's selection (at its suite setting) against SDPA dense attention: mean per-row cosine"
             " of the outputs, relative L2 error `||out - dense|| / ||dense||`, attention-mass recall (dense"
             " probability on the selected keys), edges per query and causal sparsity. Synthetic sources:"
             f" batch 1, {s['synthetic_shape']['heads']}:{s['synthetic_shape']['kv_heads']} heads,"
             f" D = {s['synthetic_shape']['head_dim']}, causal. Real: Q/K/V of every layer and head of a"
             " pretrained transformer on real text (below); values per layer averaged over layers. Outputs are"
             " the softmax restricted to each selection (what the shared sparse kernel computes).",
             "",
             "On i.i.d. Gaussian Q/K with D = 64 the scaled logits have standard deviation 1, so dense attention"
             " is spread over a large share of the keys (see its effective keys) and every sparse method loses"
             " mass there *by construction*: the Gaussian table is a worst case, not a typical one. Clustered"
             " and real Q/K have the structure selection methods rely on.",
             ""]
    real = section.get("real", {})
    budget = s["budget"]
    for source, causal, label in PANELS:
        rows = _rows(section["rows"], source, causal)
        if not rows:
            continue
        parts += [_source_line(section, source, causal, label, rows[0]["n"]), ""]
        if source == "real" and not causal:
            parts += [f"Source: {real.get('model')}; text: {real.get('text')}; {real.get('windows')} window(s) of"
                      f" {real.get('n_tokens')} tokens ([CLS] + text + [SEP]), {real.get('layers')} layers x"
                      f" {real.get('heads')} heads of dim {real.get('head_dim')}; Python {real.get('python')}."
                      f" Window starts: " + "; ".join(f"\"{t} ...\"" for t in real.get("first_tokens", []))
                      + f". The fixed budget of {budget} keys is {budget / rows[0]['n']:.0%} of this sequence,"
                      " so compare methods at their edges per query.", ""]
        if source == "real" and causal:
            parts += ["The model was trained bidirectionally; this applies a causal mask to the same Q/K/V, as in"
                      " the rest of the (causal) suite.", ""]
        body = [[r["method"], fmt(r["cosine"]), fmt(r["rel_l2"]), fmt(r["recall"]), fmt(r["edges_per_query"], 1),
                 fmt(r["causal_sparsity"])] for r in rows]
        parts += [table(["method", "cosine", "rel. L2", "recall", "edges/query", "causal sparsity"], body), ""]
    if "skipped" in real:
        parts += [f"**Real attention: skipped.** {real['skipped']}", ""]
    for causal in (False, True):
        layer_rows = [r for r in section.get("layer_rows", []) if r["causal"] == causal]
        if not layer_rows:
            continue
        layers, methods, recall = pivot(layer_rows, "layer", "method", "recall")
        eff = {p["group"]: p["effective_keys"] for p in section.get("profiles", [])
               if p["source"] == "real" and p["causal"] == causal}
        body = [[layer, fmt(eff.get(layer), 0)] + [fmt(recall[layer, m]) for m in methods] for layer in layers]
        parts += [f"**Real attention: recall per layer ({'causal mask' if causal else 'bidirectional'})**,"
                  " with each layer's effective keys per query.", "",
                  table(["layer", "effective keys", *methods], body), ""]
    return "\n".join(parts)


def plots(section: dict[str, Any], out_dir: Path) -> list[str]:
    import matplotlib.pyplot as plt

    panels = [(source, causal, label) for source, causal, label in PANELS if _rows(section["rows"], source, causal)]
    methods = list(dict.fromkeys(r["method"] for r in section["rows"]))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    width = 0.8 / len(methods)
    for ax, metric, title in zip(axes, ("recall", "cosine"), ("attention-mass recall", "per-row cosine vs dense"),
                                 strict=True):
        for i, method in enumerate(methods):
            values = []
            for source, causal, _ in panels:
                match = [r[metric] for r in _rows(section["rows"], source, causal) if r["method"] == method]
                values.append(match[0] if match else 0.0)
            xs = [j + i * width for j in range(len(panels))]
            ax.bar(xs, values, width, color=style(method)["color"], label=method)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(panels))],
                      [f"{label}\nN = {_rows(section['rows'], s, c)[0]['n']}" for s, c, label in panels], fontsize=8)
        lowest = min(r[metric] for r in section["rows"])
        ax.set_ylim(min(0.0, lowest - 0.05), 1.05)
        ax.set_ylabel(f"{metric} (1 = dense)")
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    if "skipped" in section.get("real", {}):
        axes[0].text(0.02, 0.97, "real attention skipped (model not installed)", transform=axes[0].transAxes,
                     fontsize=8, va="top")
    axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="method")
    fig.suptitle("Output quality of each method by source of Q/K/V (mean over rows, heads; real: over layers)",
                 fontsize=10)
    return [save(fig, out_dir, "quality.png")]

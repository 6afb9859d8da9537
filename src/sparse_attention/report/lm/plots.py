"""Plots of LM runs, drawn from result dicts only (``training_results.json``); nothing is re-measured.

* :func:`plot_training_curves`: one run's losses, accuracy, perplexity and, for DSA runs, the
  indexer's KL, recall and selection statistics against the global step ("position"), with
  the stage boundaries (warm-up | sparse) marked. The trainer calls it at the end of a run.
* :func:`plot_performance_comparison`: a dense baseline next to a sparse run: final quality,
  speed and memory as bars (numbers from :func:`~sparse_attention.experiments.lm.compare.run_summary`),
  and the validation curves of the two main stages against their step.

Matplotlib runs with the Agg backend; figures are saved and closed, never shown.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

from ..style import save, style
from .summary import run_summary


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _series(records: list[dict], key: str, x: str = "position") -> tuple[list, list]:
    """``(xs, ys)`` of the records that hold a finite ``key`` (NaN is stored as null)."""
    pairs = [(r[x], r[key]) for r in records if _finite(r.get(key))]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _moving_average(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def stage_boundaries(results: dict) -> list[tuple[int, str]]:
    """``[(position, "warmup | sparse"), ...]``: where each stage after the first begins."""
    stages = results.get("stages", [])
    marks, position = [], 0
    for before, after in itertools.pairwise(stages):
        position += before["steps"]
        marks.append((position, f"{before['name']} | {after['name']}"))
    return marks


def _mark_stages(ax, marks: list[tuple[int, str]], *, label: bool) -> None:
    for position, text in marks:
        ax.axvline(position, color="tab:gray", linestyle="--", linewidth=1)
        if label:
            ax.annotate(text, (position, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -12),
                        textcoords="offset points", fontsize=8, color="tab:gray")


def is_sparse_run(results: dict) -> bool:
    """True when the run's evaluations carry selection statistics (DSA or another method)."""
    return any(_finite(r.get("recall")) or _finite(r.get("indexer_kl")) for r in results.get("evals", []))


def plot_training_curves(results: dict, path: str | Path) -> Path:
    """Training curves of one run (see the module docstring); returns the written file.

    Panels: train LM loss (per step and a moving average) with the validation loss, validation
    accuracy, validation perplexity; for runs with selection statistics also the indexer KL
    (validation KL to the dense attention, and the training indexer loss), the recall of dense
    attention mass, and sparsity/coverage. Every panel's x axis is the global step over all stages.
    """
    plt = _pyplot()
    path = Path(path)
    evals, losses = results.get("evals", []), results.get("train_losses", [])
    marks = stage_boundaries(results)
    sparse = is_sparse_run(results)
    method = results.get("config", {}).get("model", {}).get("attention", "dense")
    color = style(method)["color"]
    n_panels = 6 if sparse else 3
    fig, axes = plt.subplots(2 if sparse else 1, 3, figsize=(15, 8 if sparse else 4), squeeze=False)
    axes = axes.ravel()

    ax = axes[0]
    xs, ys = _series(losses, "lm_loss")
    if xs:
        ax.plot(xs, ys, color=color, alpha=0.3, linewidth=0.8, label="train LM loss")
        window = max(1, len(ys) // 50)
        if window > 1:
            ax.plot(xs, _moving_average(ys, window), color=color, linewidth=1.5,
                    label=f"train LM loss ({window}-step mean)")
    xs, ys = _series(evals, "val_loss")
    ax.plot(xs, ys, color="black", marker="o", markersize=4, linewidth=1.2, label="val loss")
    ax.set_title("LM loss")
    ax.set_ylabel("cross entropy (nats)")
    ax.legend(fontsize=8)

    for ax, key, title in ((axes[1], "val_accuracy", "validation accuracy"),
                           (axes[2], "val_perplexity", "validation perplexity")):
        xs, ys = _series(evals, key)
        ax.plot(xs, ys, color=color, marker="o", markersize=4)
        ax.set_title(title)
    axes[2].set_yscale("log")

    if sparse:
        ax = axes[3]
        xs, ys = _series(evals, "indexer_kl")
        ax.plot(xs, ys, color=color, marker="o", markersize=4, label="val KL(dense attention || indexer)")
        xs, ys = _series(losses, "indexer_loss")
        if xs:
            ax.plot(xs, ys, color="tab:blue", alpha=0.4, linewidth=0.8, label="train indexer loss")
        if any(v > 0 for v in ys) or any(_finite(r.get("indexer_kl")) and r["indexer_kl"] > 0 for r in evals):
            ax.set_yscale("log")
        ax.set_title("indexer KL")
        ax.legend(fontsize=8)

        ax = axes[4]
        xs, ys = _series(evals, "recall")
        ax.plot(xs, ys, color=color, marker="o", markersize=4, label="indexer top-k")
        xs, ys = _series(evals, "oracle_recall")
        if xs:
            ax.plot(xs, ys, color="0.4", linestyle="--", label="oracle: top-k of the dense attention")
        ax.legend(fontsize=8)
        ax.set_title("recall (dense attention mass on the top-k)")
        ax.set_ylim(0, 1.02)

        ax = axes[5]
        for key, line in (("sparsity", "-"), ("coverage", "--")):
            xs, ys = _series(evals, key)
            ax.plot(xs, ys, color=color, linestyle=line, marker="o", markersize=4, label=key)
        ax.set_title("causal sparsity and key coverage")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=8)

    for i, ax in enumerate(axes[:n_panels]):
        _mark_stages(ax, marks, label=(i == 0))
        ax.set_xlabel("step (all stages)")
        ax.grid(alpha=0.3)
    config = results.get("config", {})
    train = config.get("train", {})
    fig.suptitle(f"{method} LM: {config.get('model', {}).get('n_layers', '?')} layers, "
                 f"N={train.get('seq_len', '?')}, batch {train.get('batch_size', '?')}", fontsize=11)
    path.parent.mkdir(parents=True, exist_ok=True)
    save(fig, path.parent, path.name)
    return path


#: (summary key, panel title, scale of the value) of the comparison's bar panels.
COMPARISON_BARS = (
    ("val_loss", "final val loss", 1.0),
    ("val_accuracy", "final val accuracy", 1.0),
    ("val_perplexity", "final val perplexity", 1.0),
    ("time_per_step_s", "time per step (ms), main stage", 1e3),
    ("tokens_per_s", "training tokens/s, main stage", 1.0),
    ("peak_memory_mb", "peak memory (MB), main stage", 1.0),
)


def plot_performance_comparison(dense_results: dict, sparse_results: dict, path: str | Path) -> Path:
    """Dense baseline vs sparse run: bars of final quality, speed and memory, and the validation
    loss and accuracy of both main stages against their step. Returns the written file."""
    plt = _pyplot()
    path = Path(path)
    runs = [("dense", dense_results), (sparse_results.get("config", {}).get("model", {}).get("attention", "sparse"),
                                      sparse_results)]
    summaries = [run_summary(results) for _, results in runs]
    fig, axes = plt.subplots(2, 4, figsize=(17, 8))
    axes = axes.ravel()
    for ax, (key, title, scale) in zip(axes, COMPARISON_BARS):
        names, values, colors = [], [], []
        for (name, _), summary in zip(runs, summaries):
            value = summary.get(key)
            names.append(name)
            values.append(value * scale if _finite(value) else 0.0)
            colors.append(style(name)["color"])
        bars = ax.bar(names, values, color=colors, alpha=0.8)
        for bar, (name, _), summary in zip(bars, runs, summaries):
            value = summary.get(key)
            text = f"{value * scale:.4g}" if _finite(value) else "n/a"
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                        fontsize=9)
        ax.set_title(title, fontsize=10)
        ax.margins(y=0.15)
    for ax, key, title in ((axes[6], "val_loss", "val loss, main stage"),
                           (axes[7], "val_accuracy", "val accuracy, main stage")):
        for (name, results), summary in zip(runs, summaries):
            evals = [r for r in results.get("evals", []) if r["stage"] == summary["stage"]]
            xs, ys = _series(evals, key, x="step")
            ax.plot(xs, ys, markersize=4, **{**style(name), "label": f"{name} ({summary['stage']})"})
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("main-stage step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("dense baseline vs " + runs[1][0] + ": same config, data and batch order", fontsize=11)
    path.parent.mkdir(parents=True, exist_ok=True)
    save(fig, path.parent, path.name)
    return path

"""Summaries of a finished LM run, read from its ``training_results.json`` dict (no training
or plotting here: the trainer writes the results, plots and comparisons read them)."""

from __future__ import annotations

import math
import statistics
from typing import Any

from ...models.decoder import STAT_KEYS  # selection statistics copied from a final evaluation when present


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def ratio(a: Any, b: Any) -> float | None:
    return a / b if finite(a) and finite(b) and b != 0 else None


def run_summary(results: dict) -> dict:
    """Final metrics of a run's main (last) stage, read from its ``training_results.json`` dict.

    Returns ``stage``, ``steps``, ``val_loss``, ``val_accuracy``, ``val_perplexity`` (the stage's
    last evaluation), ``time_per_step_s`` (median over the stage's evaluation windows of their
    mean step time: robust to the first step's one-off costs and to a busy machine),
    ``tokens_per_s``, ``peak_memory_mb`` (largest of the stage's windows), ``train_time_s`` and
    the selection statistics of the last evaluation (:data:`STAT_KEYS`) when present.
    """
    stage = results["stages"][-1]
    final = results["final"].get(stage["name"])
    if final is None:
        raise ValueError(f"the run has no evaluation of its last stage {stage['name']!r}")
    evals = [r for r in results["evals"] if r["stage"] == stage["name"]]
    times = [r["time_per_step"] for r in evals if finite(r.get("time_per_step"))]
    peaks = [r["peak_memory_mb"] for r in evals if finite(r.get("peak_memory_mb"))]
    train = results["config"]["train"]
    tokens_per_step = train["batch_size"] * train["seq_len"] * results.get("world_size", 1)
    time_per_step = statistics.median(times) if times else None
    summary = {
        "stage": stage["name"], "steps": stage["steps"],
        "val_loss": final["val_loss"], "val_accuracy": final["val_accuracy"],
        "val_perplexity": final["val_perplexity"],
        "time_per_step_s": time_per_step, "tokens_per_s": ratio(tokens_per_step, time_per_step),
        "peak_memory_mb": max(peaks) if peaks else None, "train_time_s": results.get("train_time_s"),
    }
    summary.update({key: final[key] for key in STAT_KEYS if key in final})
    return summary

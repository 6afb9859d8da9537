"""The DSA experiment: a dense baseline and a DSA run (warm-up + sparse) with one config, compared.

:func:`run_dsa_experiment` trains both runs with :func:`~sparse_attention.training.trainer.train` on the
same data and batch order (the config differs only in ``model.attention``) into ``OUT/dense/``
and ``OUT/sparse/``; with ``train.pretrain.steps`` > 0 the DSA run starts from the dense run's
pre-training checkpoint (``OUT/dense/pretrain_checkpoint``; the two runs are identical up to
there) instead of training it again. Then it writes ``OUT/comparison/``:

* ``comparison_metrics.json``: :func:`comparison_metrics` (every number read from the two
  runs' ``training_results.json``), machine info and both configs;
* ``performance_comparison.png`` (:func:`~sparse_attention.report.lm.plots.plot_performance_comparison`);
* the visualisations of the sparse run (:func:`~sparse_attention.experiments.lm.visualize.visualize_run`).

Timing caveat: the two runs train one after the other in one process, not interleaved; on a
shared machine their time ratio carries that noise (``sparse-attention profile`` interleaves).
Peak memory on a CPU is the process's resident-set high-water mark (interpreter and data
included), so its ratio understates the difference of the attention itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...report.lm.plots import plot_training_curves
from ...report.lm.summary import finite as _finite
from ...report.lm.summary import ratio as _ratio
from ...report.lm.summary import run_summary
from ...training.checkpoint import PRETRAIN_CHECKPOINT_DIR
from ...training.config import RunConfig
from ...utils.machine import machine_info
from ...utils.results_io import write_json

#: ``--quick``: applied after the preset (``small``) and before the user's ``--set`` values.
#: With ``--preset small``: about a minute for both runs on 2 idle CPU cores.
QUICK_SCHEDULE = {
    "train.seq_len": 128,
    "model.top_k": 32,
    "train.warmup.steps": 40,
    "train.main.steps": 200,
    "train.main.lr_warmup_steps": 10,
    "train.eval_every": 40,
    "train.eval_batches": 2,
}


#: Every key of :func:`comparison_metrics` besides ``dense``/``sparse``, with its meaning.
COMPARISON_DEFINITIONS = {
    "val_loss_dense": "final validation loss of the dense run (its last evaluation)",
    "val_loss_sparse": "final validation loss of the DSA run (last evaluation of its sparse stage)",
    "val_accuracy_dense": "final validation next-token accuracy, dense",
    "val_accuracy_sparse": "final validation next-token accuracy, DSA",
    "val_perplexity_dense": "final validation perplexity, dense",
    "val_perplexity_sparse": "final validation perplexity, DSA",
    "relative_val_loss_gap": "(val_loss_sparse - val_loss_dense) / val_loss_dense",
    "time_per_step_dense_s": "median over the main stage's evaluation windows of the mean training step time",
    "time_per_step_sparse_s": "the same for the DSA run's sparse stage",
    "time_per_step_ratio": "time_per_step_dense_s / time_per_step_sparse_s (> 1: sparse steps are faster)",
    "tokens_per_s_dense": "batch_size * seq_len * world_size / time_per_step_dense_s",
    "tokens_per_s_sparse": "the same for the DSA run",
    "peak_memory_dense_mb": "largest peak memory of the main stage's evaluation windows (CPU: process RSS)",
    "peak_memory_sparse_mb": "the same for the DSA run's sparse stage",
    "peak_memory_ratio": "peak_memory_dense_mb / peak_memory_sparse_mb",
    "sparsity": "causal sparsity of the indexer's top-k at the end (1 - selected pairs / causal pairs)",
    "recall_after_warmup": "dense attention mass on the indexer's top-k after the warm-up stage",
    "recall_final": "dense attention mass on the indexer's top-k at the end of the sparse stage",
    "oracle_recall_after_warmup": "dense attention mass on the top-k of the head-summed dense attention itself"
                                  " (the best a shared selection can reach) after the warm-up stage",
    "oracle_recall_final": "the same at the end of the sparse stage",
    "indexer_kl_after_warmup": "KL(dense attention || indexer distribution) after the warm-up stage",
    "indexer_kl_final": "the same KL at the end of the sparse stage",
    "coverage": "share of key positions selected by at least one query, at the end",
    "mean_distance": "mean |query - key| distance of the selected keys, at the end",
}


def comparison_metrics(dense_results: dict, sparse_results: dict) -> dict:
    """The comparison of a dense and a DSA run (keys: :data:`COMPARISON_DEFINITIONS` plus the two
    :func:`run_summary` dicts under ``dense`` and ``sparse``). Missing values are None."""
    d, s = run_summary(dense_results), run_summary(sparse_results)
    warmup = sparse_results["final"].get("warmup", {})
    metrics = {
        "val_loss_dense": d["val_loss"], "val_loss_sparse": s["val_loss"],
        "val_accuracy_dense": d["val_accuracy"], "val_accuracy_sparse": s["val_accuracy"],
        "val_perplexity_dense": d["val_perplexity"], "val_perplexity_sparse": s["val_perplexity"],
        "relative_val_loss_gap": _ratio(s["val_loss"] - d["val_loss"], d["val_loss"]),
        "time_per_step_dense_s": d["time_per_step_s"], "time_per_step_sparse_s": s["time_per_step_s"],
        "time_per_step_ratio": _ratio(d["time_per_step_s"], s["time_per_step_s"]),
        "tokens_per_s_dense": d["tokens_per_s"], "tokens_per_s_sparse": s["tokens_per_s"],
        "peak_memory_dense_mb": d["peak_memory_mb"], "peak_memory_sparse_mb": s["peak_memory_mb"],
        "peak_memory_ratio": _ratio(d["peak_memory_mb"], s["peak_memory_mb"]),
        "sparsity": s.get("sparsity"),
        "recall_after_warmup": warmup.get("recall"), "recall_final": s.get("recall"),
        "oracle_recall_after_warmup": warmup.get("oracle_recall"), "oracle_recall_final": s.get("oracle_recall"),
        "indexer_kl_after_warmup": warmup.get("indexer_kl"), "indexer_kl_final": s.get("indexer_kl"),
        "coverage": s.get("coverage"), "mean_distance": s.get("mean_distance"),
    }
    assert set(metrics) == set(COMPARISON_DEFINITIONS)
    return {**metrics, "dense": d, "sparse": s}


def _normalised(config: dict, vocab_size: int | None = None) -> dict:
    """``config`` as JSON would store it (tuples become lists), optionally with its vocab filled in."""
    data = json.loads(json.dumps(config))
    if vocab_size is not None and data["model"]["vocab_size"] == 0:
        data["model"]["vocab_size"] = vocab_size
    return data


def train_or_load(config: RunConfig, run_dir: str | Path, *, skip_finished: bool, resume: bool,
                  data: Callable[[], Any] | None = None, progress: bool = True,
                  pretrained: Path | None = None) -> tuple[dict, bool]:
    """Train one run into ``run_dir``, or load it when ``skip_finished`` and it has finished.

    A finished run must have been trained with ``config`` (ValueError otherwise). ``resume``
    continues from the folder's checkpoint when it has one. ``data`` returns the loaded data
    (shared between runs). ``pretrained``: a pre-training checkpoint a fresh run starts from
    instead of pre-training itself. Returns ``(results, trained)``.
    """
    from ...training.checkpoint import find_checkpoint
    from ...training.run_dir import load_results
    from ...training.trainer import train

    run_dir = Path(run_dir)
    if skip_finished and (run_dir / "training_results.json").exists():
        results = load_results(run_dir)
        saved = results["config"]
        if _normalised(saved) != _normalised(config.to_dict(), saved["model"]["vocab_size"]):
            raise ValueError(f"{run_dir} holds a finished run with another config; choose another --out"
                             " or delete it")
        return results, False
    resuming = resume and find_checkpoint(run_dir) is not None
    results = train(config, run_dir, resume=resuming, progress=progress, data=data() if data is not None else None,
                    pretrained=None if resuming else pretrained)
    assert results is not None, "train() returns the results of a finished single-process run"
    plot_training_curves(results, run_dir / "training_curves.png")
    return results, True


def experiment_configs(config: RunConfig) -> dict[str, RunConfig]:
    """``{"dense": ..., "sparse": ...}``: fresh copies of ``config`` with attention dense and dsa."""
    return {"dense": config.with_changes(model={"attention": "dense"}),
            "sparse": config.with_changes(model={"attention": "dsa"})}


def run_dsa_experiment(config: RunConfig, out_dir: str | Path, *, resume: bool = False, progress: bool = True,
                       visualize: bool = True) -> dict:
    """Train the dense baseline and the DSA run of ``config`` and compare them (module docstring).

    ``config.model.attention`` is ignored (set to dense and dsa). ``resume`` skips a run whose
    ``training_results.json`` exists (its config must match) and continues one that has a
    checkpoint. Returns the contents of ``comparison_metrics.json``.
    """
    from ...report.lm.plots import plot_performance_comparison
    from ...data.lm import load_data

    if not isinstance(config, RunConfig):
        raise TypeError(f"config must be a RunConfig, got {type(config).__name__}")
    out = Path(out_dir)
    configs = experiment_configs(config)
    loaded: list = []

    def data():  # loaded once, on first need, and shared: both runs see the same tokens
        if not loaded:
            loaded.append(load_data(config.data, config.train.seq_len, seed=config.train.seed, progress=progress))
        return loaded[0]

    results = {}
    for name, run_config in configs.items():
        # The DSA run starts from the dense run's pre-training (identical up to there) instead of repeating it.
        pretrained = out / "dense" / PRETRAIN_CHECKPOINT_DIR if name == "sparse" and config.train.pretrain.steps else None
        if pretrained is not None and not (pretrained / "state.pt").exists():
            pretrained = None  # a dense run finished before runs kept their pre-training: pre-train again
        if progress:
            print(f"== {name} run ({run_config.model.attention}) -> {out / name}"
                  + (f", from the dense run's pre-training ({pretrained})" if pretrained else ""), flush=True)
        results[name], _ = train_or_load(run_config, out / name, skip_finished=resume, resume=resume, data=data,
                                         progress=progress, pretrained=pretrained)
    comparison = out / "comparison"
    comparison.mkdir(parents=True, exist_ok=True)
    metrics = comparison_metrics(results["dense"], results["sparse"])
    document = {
        **metrics,
        "definitions": COMPARISON_DEFINITIONS,
        "runs": {name: str(out / name) for name in configs},
        "data": results["sparse"].get("data"),
        "machine": machine_info(results["sparse"]["machine"]["device"]),
        "run_machines": {name: results[name]["machine"] for name in configs},
        "config": {name: results[name]["config"] for name in configs},
        "notes": "dense and sparse trained one after the other in one process on the same data and batch order;"
                 " CPU peak memory is the process resident set",
    }
    write_json(comparison / "comparison_metrics.json", document)
    plot_performance_comparison(results["dense"], results["sparse"], comparison / "performance_comparison.png")
    if visualize:
        from .visualize import visualize_run

        visualize_run(out / "sparse", comparison, progress=progress)
    return document


def format_comparison(metrics: dict) -> str:
    """A few lines for the terminal."""
    def f(key: str, spec: str = ".4f") -> str:
        value = metrics.get(key)
        return format(value, spec) if _finite(value) else "n/a"

    return "\n".join([
        (f"val loss      dense {f('val_loss_dense')}  dsa {f('val_loss_sparse')}"
         f"  gap {f('relative_val_loss_gap', '+.2%')}"),
        f"val accuracy  dense {f('val_accuracy_dense')}  dsa {f('val_accuracy_sparse')}",
        f"perplexity    dense {f('val_perplexity_dense', '.3f')}  dsa {f('val_perplexity_sparse', '.3f')}",
        (f"time/step     dense {f('time_per_step_dense_s', '.4f')} s  dsa {f('time_per_step_sparse_s', '.4f')} s"
         f"  ratio dense/dsa {f('time_per_step_ratio', '.3f')}"),
        f"tokens/s      dense {f('tokens_per_s_dense', '.0f')}  dsa {f('tokens_per_s_sparse', '.0f')}",
        (f"peak memory   dense {f('peak_memory_dense_mb', '.1f')} MB  dsa {f('peak_memory_sparse_mb', '.1f')} MB"
         f"  ratio {f('peak_memory_ratio', '.3f')}"),
        (f"indexer       sparsity {f('sparsity', '.3f')}  recall after warm-up {f('recall_after_warmup', '.3f')}"
         f"  final {f('recall_final', '.3f')}  (oracle {f('oracle_recall_after_warmup', '.3f')} /"
         f" {f('oracle_recall_final', '.3f')})  KL {f('indexer_kl_after_warmup', '.4g')} ->"
         f" {f('indexer_kl_final', '.4g')}  coverage {f('coverage', '.3f')}"
         f"  mean distance {f('mean_distance', '.1f')}"),
    ])

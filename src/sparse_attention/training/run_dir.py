"""Reading a finished (or checkpointed) run folder back: config, model weights, results."""

from __future__ import annotations

import json
from pathlib import Path

from ..models.decoder import SparseLM
from ..utils.results_io import read_json
from .checkpoint import find_checkpoint, load_weights
from .config import RunConfig


def load_run_config(run_dir: str | Path) -> RunConfig:
    """The run's ``config.json`` (vocab size resolved when the run has checkpointed)."""
    run_dir = Path(run_dir)
    checkpoint = find_checkpoint(run_dir)
    path = checkpoint / "config.json" if checkpoint is not None else run_dir / "config.json"
    if not path.exists():
        raise ValueError(f"{run_dir} is not a run folder: no config.json (train one with `sparse-attention train`)")
    return RunConfig.from_dict(json.loads(path.read_text()))


def load_model(run_dir: str | Path) -> tuple[SparseLM, RunConfig]:
    """The trained model of ``run_dir`` (final weights, else the latest checkpoint), in eval mode."""
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    weights = run_dir / "model.safetensors"
    if not weights.exists():
        checkpoint = find_checkpoint(run_dir)
        if checkpoint is None:
            raise ValueError(f"{run_dir} holds no weights yet (model.safetensors or checkpoint/)")
        weights = checkpoint / "model.safetensors"
    model = SparseLM(config.model)
    load_weights(model, weights)
    return model.eval(), config


def load_results(run_dir: str | Path) -> dict:
    """``training_results.json`` of a finished run."""
    path = Path(run_dir) / "training_results.json"
    if not path.exists():
        raise ValueError(f"{run_dir} has no training_results.json: the run has not finished")
    return read_json(path)

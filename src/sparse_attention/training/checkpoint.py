"""Atomic checkpoints: safetensors weights + optimizer, scheduler, RNG and position.

Layout of ``RUN_DIR/checkpoint/``: ``model.safetensors`` (weights), ``state.pt`` (optimizer,
scheduler, RNG states, stage index and step, elapsed time), ``config.json``. A checkpoint is
written to ``checkpoint.tmp/`` and then swapped in with renames, so an interruption leaves
either the old or the new checkpoint, never a half-written one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._optional import require

CHECKPOINT_DIR = "checkpoint"
#: The model and state at the end of the dense pre-training stage, kept for later runs to start from.
PRETRAIN_CHECKPOINT_DIR = "pretrain_checkpoint"
#: What needs ``safetensors`` (named by the error when it is not installed).
WEIGHTS_FEATURE = "saving and loading LM weights (model.safetensors)"


def safetensors_torch():
    """``safetensors.torch``, imported on first use (:class:`MissingDependency` when not installed).
    The trainer calls it before any work, so a run never fails at its first checkpoint."""
    return require("safetensors.torch", WEIGHTS_FEATURE)


def save_weights(model: nn.Module, path: Path) -> None:
    """Weights as safetensors (tied embeddings are stored once), written atomically."""
    tmp = path.with_name(path.name + ".tmp")
    state = {name: t.detach().contiguous().cpu() for name, t in model.state_dict().items()}
    safetensors_torch().save_file(state, str(tmp))
    os.replace(tmp, path)


def load_weights(model: nn.Module, path: Path, *, strict: bool = True) -> list[str]:
    """Load ``path`` into ``model``; returns the names of parameters the file lacks (only with
    ``strict=False``). ValueError when the file holds a parameter the model does not have."""
    missing, unexpected = model.load_state_dict(safetensors_torch().load_file(str(path)), strict=strict)
    if unexpected:
        raise ValueError(f"{path} holds parameters this model lacks: {', '.join(unexpected[:5])}")
    return list(missing)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, model: nn.Module, state: dict[str, Any], config: dict, *,
                    name: str = CHECKPOINT_DIR) -> None:
    """Write ``run_dir/<name>`` (default ``checkpoint``) atomically. ``state`` holds optimizer/scheduler
    state dicts, the position (``stage``, ``step``) and anything else the trainer needs to continue."""
    final = run_dir / name
    tmp = run_dir / (name + ".tmp")
    old = run_dir / (name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_weights(model, tmp / "model.safetensors")
    torch.save({**state, "rng": rng_state()}, tmp / "state.pt")
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint folder to resume from (a finished swap's leftover ``.old`` counts when the
    new one is missing), or None."""
    for name in (CHECKPOINT_DIR, CHECKPOINT_DIR + ".old"):
        path = run_dir / name
        if (path / "state.pt").exists() and (path / "model.safetensors").exists():
            return path
    return None


def load_checkpoint(path: Path, model: nn.Module, *, strict: bool = True) -> dict[str, Any]:
    """Load weights into ``model`` and return the saved state (RNG restored). ``strict=False``
    lets parameters the checkpoint lacks keep their values (a DSA model's indexers, started from
    a dense run's pre-training)."""
    load_weights(model, path / "model.safetensors", strict=strict)
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    set_rng_state(state.pop("rng"))
    return state

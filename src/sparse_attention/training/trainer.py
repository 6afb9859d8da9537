"""Training of one run: the DSA recipe (dense warm-up, then sparse training) or a single stage.

Stages (:func:`plan_stages`):

* ``attention=dsa``: ``warmup`` (dense attention, everything frozen except the lightning
  indexers, loss = KL to the dense attention; ``train.warmup``) then ``sparse`` (top-k
  attention, all parameters; LM + load-balancing loss for the model, the KL restricted to the
  selection for the indexers, whose input is detached; ``train.main``, indexer lr
  ``train.indexer_lr``).
* ``attention=dense``: ``dense`` (``train.main``). Any other method: ``sparse`` (``train.main``).
* Before those, every run may pre-train densely (``pretrain``, all parameters), the way
  DeepSeek-V3.2 starts DSA from a trained dense model.

The main stage of every run draws batch ``s`` at its step ``s``, so a dense baseline and a
sparse run with one config see identical data in identical order. Evaluation every
``train.eval_every`` steps and at the end of each stage appends a record to
``RUN_DIR/metrics.jsonl`` (and TensorBoard when installed); every step appends its training
loss. Checkpoints every ``train.checkpoint_every`` steps and at stage ends; ``resume=True``
continues from the last one and reproduces the losses of an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..models.decoder import STAT_KEYS, SparseLM
from ..ops.dispatch import dispatch_record
from ..utils.machine import machine_info
from ..utils.memory import peak_memory_since_reset, reset_peak_memory
from ..utils.results_io import write_json, write_text
from .checkpoint import (
    PRETRAIN_CHECKPOINT_DIR,
    find_checkpoint,
    load_checkpoint,
    load_weights,
    safetensors_torch,
    save_checkpoint,
    save_weights,
    set_rng_state,
)
from .config import RunConfig, StageConfig
from .distributed import DistContext, init_distributed, shutdown_distributed
from .precision import apply_precision

#: Each stage draws its batches from its own range of steps, so stages never reuse each other's
#: batches while every run's stage of one name sees the same ones.
STAGE_STEP_OFFSET = {"pretrain": 2 << 30, "warmup": 1 << 30}


@dataclass(frozen=True)
class Stage:
    """One stage of a run: ``name``, its step/lr settings and the attention mode it trains in."""

    name: str
    config: StageConfig
    mode: str


def plan_stages(config: RunConfig) -> list[Stage]:
    """The stages a run goes through (see the module docstring); stages with 0 steps are dropped."""
    attention, train = config.model.attention, config.train
    stages = [Stage("pretrain", train.pretrain, "dense")]
    if attention == "dense":
        stages.append(Stage("dense", train.main, "dense"))
    elif config.model.uses_indexer:
        stages += [Stage("warmup", train.warmup, "warmup"), Stage("sparse", train.main, "sparse")]
    else:
        stages.append(Stage("sparse", train.main, "sparse"))
    return [s for s in stages if s.config.steps > 0]


def lr_factor(stage: StageConfig, step: int) -> float:
    """Learning-rate multiplier at ``step``: linear warm-up, then cosine to ``min_lr_ratio``."""
    if step < stage.lr_warmup_steps:
        return (step + 1) / stage.lr_warmup_steps
    span = max(1, stage.steps - stage.lr_warmup_steps)
    progress = min(1.0, (step - stage.lr_warmup_steps) / span)
    return stage.min_lr_ratio + (1 - stage.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: SparseLM, stage: Stage, config: RunConfig) -> torch.optim.Optimizer:
    """AdamW over what ``stage`` trains. Warm-up: the indexers only. Main stage: the model
    (weight decay on matrices only) plus the indexers at ``train.indexer_lr``."""
    train = config.train
    indexer = model.indexer_parameters()
    indexer_ids = {id(p) for p in indexer}
    if stage.name == "warmup":
        groups = [{"params": indexer, "lr": stage.config.lr, "weight_decay": 0.0}]
    else:
        rest = [p for p in model.parameters() if id(p) not in indexer_ids]
        groups = [
            {"params": [p for p in rest if p.dim() >= 2], "lr": stage.config.lr, "weight_decay": train.weight_decay},
            {"params": [p for p in rest if p.dim() < 2], "lr": stage.config.lr, "weight_decay": 0.0},
        ]
        if indexer:
            groups.append({"params": indexer, "lr": train.indexer_lr, "weight_decay": 0.0})
    for group in groups:
        group["base_lr"] = group["lr"]
    return torch.optim.AdamW(groups, betas=train.betas)


def set_trainable(model: SparseLM, stage: Stage) -> None:
    """Warm-up freezes everything but the indexers; other stages train everything."""
    indexer_ids = {id(p) for p in model.indexer_parameters()}
    for p in model.parameters():
        p.requires_grad_(stage.name != "warmup" or id(p) in indexer_ids)


class MetricsLog:
    """``metrics.jsonl`` (one JSON object per line) plus TensorBoard scalars when available."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(run_dir / "tensorboard"))
            except Exception:  # tensorboard not installed: the JSONL file is the record
                self.writer = None

    def truncate_after(self, position: int) -> None:
        """Drop records past ``position`` (written after the checkpoint a resume starts from), and a
        last line cut short by a killed process; the file is replaced atomically."""
        if not self.enabled or not self.path.exists():
            return
        kept = [json.dumps(record) for record in self.read() if record["position"] <= position]
        write_text(self.path, "".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("step", "position"):
                    self.writer.add_scalar(f"{record['kind']}/{key}", value, record["position"])

    def read(self) -> list[dict]:
        """Every record; a last line without its newline (the write of a killed process) is not one."""
        if not self.path.exists():
            return []
        text = self.path.read_text()
        complete = text if text.endswith("\n") else text[: text.rfind("\n") + 1]
        return [json.loads(line) for line in complete.splitlines() if line.strip()]

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _autocast(device: torch.device, dtype: str):
    if dtype == "bfloat16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return torch.autocast(device_type=device.type, enabled=False)


@torch.no_grad()
def evaluate(model: SparseLM, batches: list, mode: str, device: torch.device, dtype: str = "float32") -> dict[str, float]:
    """Validation loss, accuracy, perplexity and attention statistics (first batch) in ``mode``."""
    model.eval()
    loss_sum, correct, scored, stats = 0.0, 0, 0, {}
    for i, (inputs, targets) in enumerate(batches):
        with _autocast(device, dtype):
            out = model(inputs.to(device), targets.to(device), mode=mode, collect=(i == 0))
        loss_sum += out.loss.item() * out.scored
        correct += out.correct
        scored += out.scored
        if i == 0:
            for key in STAT_KEYS:
                values = [layer.stats[key] for layer in out.layers if key in layer.stats]
                if values:
                    stats[key] = sum(values) / len(values)
    model.train()
    loss = loss_sum / max(1, scored)
    return {"val_loss": loss, "val_accuracy": correct / max(1, scored), "val_perplexity": math.exp(min(loss, 50.0)),
            **stats}


class Trainer:
    """Trains one run into ``run_dir`` (see the module docstring).

    Args:
        config: the run's configuration (``model.vocab_size`` 0 is filled in from the data).
        run_dir: output folder (created).
        resume: continue from ``run_dir``'s checkpoint. Its config must match except for the
            keys of :data:`RESUME_MAY_CHANGE`; a larger ``train.main.steps`` extends a run, a
            finished one too (the cosine schedule is recomputed for the new length from the
            resumed step on).
        progress: show a progress bar (main process only).
        data: an already loaded :class:`~sparse_attention.data.lm.LMData` (else loaded from
            ``config.data``).
    """

    def __init__(self, config: RunConfig, run_dir: str | Path, *, resume: bool = False, progress: bool = True,
                 data: Any = None, pretrained: str | Path | None = None):
        safetensors_torch()  # weights are saved as safetensors: a missing package fails here, not at a checkpoint
        self.ctx: DistContext = init_distributed(config.train.device)
        self.run_dir = Path(run_dir)
        self.progress = progress and self.ctx.is_main
        if data is None:
            from ..data.lm import load_data

            data = load_data(config.data, config.train.seq_len, seed=config.train.seed, progress=self.progress)
        self.data = data
        config = RunConfig.from_dict(config.to_dict())  # a copy: the caller's config is not changed
        config, self.precision_note = apply_precision(config, self.ctx.device)
        if config.model.vocab_size == 0:
            config.model.vocab_size = self.data.vocab_size
        elif config.model.vocab_size < self.data.vocab_size:
            raise ValueError(f"model.vocab_size ({config.model.vocab_size}) is smaller than the data's vocabulary"
                             f" ({self.data.vocab_size})")
        self.config = config
        self.stages = plan_stages(config)
        if not self.stages:
            raise ValueError("nothing to train: every stage has 0 steps")
        torch.manual_seed(config.train.seed)
        self.model = SparseLM(config.model, seed=config.train.seed).to(self.ctx.device)
        self.val = self.data.val_batches(config.train.eval_batches, config.train.batch_size)
        self.stage_index, self.step, self.train_time = 0, 0, 0.0
        self.optimizer: torch.optim.Optimizer | None = None
        self.resumed_state: dict | None = None
        if self.ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.ctx.barrier()
        self.log = MetricsLog(self.run_dir, self.ctx.is_main)
        self.pretrained_from: str | None = None
        if resume:
            self._resume()
        else:
            if self.ctx.is_main:
                if self.log.path.exists():
                    self.log.path.unlink()
                write_text(self.run_dir / "config.json", json.dumps(config.to_dict(), indent=2))
            if pretrained is not None:
                self._start_from_pretraining(Path(pretrained))

    # -- positions: a global counter over all stages, used to order records ----------------
    def _position(self, stage_index: int, step: int) -> int:
        return sum(s.config.steps for s in self.stages[:stage_index]) + step

    def _resume(self) -> None:
        path = find_checkpoint(self.run_dir)
        if path is None:
            raise ValueError(f"--resume: no checkpoint in {self.run_dir}")
        saved = RunConfig.from_dict(json.loads((path / "config.json").read_text()))
        changed = config_differences(saved.to_dict(), self.config.to_dict())
        refused = [key for key in changed if key not in RESUME_MAY_CHANGE
                   or (key == "train.main.steps" and not 0 < saved.train.main.steps <= self.config.train.main.steps)]
        if refused:
            shown = "; ".join(f"{key}: {changed[key][0]!r} -> {changed[key][1]!r}" for key in refused)
            raise ValueError(f"--resume: the config differs from the checkpoint's ({path / 'config.json'}) in {shown}."
                             f" Only {', '.join(sorted(RESUME_MAY_CHANGE))} may change on resume"
                             " (train.main.steps may only grow); resume with the same preset and --set values")
        state = load_checkpoint(path, self.model)
        self.stage_index, self.step, self.train_time = state["stage"], state["step"], state["train_time"]
        if self.stage_index == len(self.stages) and self.config.train.main.steps > saved.train.main.steps:
            # A finished run with a longer main stage: go back into its last stage.
            self.stage_index, self.step = len(self.stages) - 1, saved.train.main.steps
        if changed and self.ctx.is_main:
            write_text(self.run_dir / "config.json", json.dumps(self.config.to_dict(), indent=2))
        self.resumed_state = state
        self.log.truncate_after(self._position(self.stage_index, self.step))

    def _start_from_pretraining(self, path: Path) -> None:
        """Skip this run's ``pretrain`` stage: take the weights, RNG state and training time that another
        run of the same config (but its attention) had at the end of its own (its
        ``pretrain_checkpoint``). Parameters that run lacks (the indexers) keep their initial values,
        which the pre-training stage leaves untouched here too, so the later stages are the same as
        after pre-training in this run."""
        if not self.stages or self.stages[0].name != "pretrain":
            raise ValueError("pretrained: this run has no pretrain stage (train.pretrain.steps is 0)")
        if not (path / "state.pt").exists():
            raise ValueError(f"pretrained: {path} is not a pre-training checkpoint (no state.pt)")
        saved = RunConfig.from_dict(json.loads((path / "config.json").read_text()))
        changed = {key: value for key, value in config_differences(saved.to_dict(), self.config.to_dict()).items()
                   if not key.startswith(("model.attention", "model.method_params", "train.main.", "train.warmup."))}
        if changed:
            shown = "; ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in changed.items())
            raise ValueError(f"pretrained: {path} was pre-trained with another config ({shown})")
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
        if state.get("stage_name") != "pretrain" or state.get("stage") != 1:
            raise ValueError(f"pretrained: {path} is not the end of a pretrain stage")
        missing = load_weights(self.model, path / "model.safetensors", strict=False)
        if any(".indexer." not in name for name in missing):
            raise ValueError(f"pretrained: {path} lacks model parameters: {', '.join(missing[:5])}")
        set_rng_state(state["rng"])
        self.stage_index, self.step, self.train_time = 1, 0, state["train_time"]
        self.pretrained_from = str(path)

    def _save(self, stage: Stage) -> None:
        if self.ctx.is_main:
            last_done = self.stage_index == len(self.stages)
            save_checkpoint(self.run_dir, self.model, {
                "stage": self.stage_index, "step": self.step, "train_time": self.train_time, "stage_name": stage.name,
                # at a stage end the next stage starts with a fresh optimizer; the last stage keeps its own,
                # so that a run extended on resume (a larger train.main.steps) continues with its moments
                "optimizer": self.optimizer.state_dict() if self.step > 0 or last_done else None,
            }, self.config.to_dict())
            if stage.name == "pretrain" and self.step == 0 and self.stage_index == 1:  # the pretrain stage just ended
                save_checkpoint(self.run_dir, self.model, {"stage": 1, "step": 0, "train_time": self.train_time,
                                                           "stage_name": "pretrain", "optimizer": None},
                                self.config.to_dict(), name=PRETRAIN_CHECKPOINT_DIR)
        self.ctx.barrier()

    def _batch(self, stage: Stage, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        offset = STAGE_STEP_OFFSET.get(stage.name, 0)
        inputs, targets = self.data.train_batch(offset + step, self.config.train.batch_size, rank=self.ctx.rank,
                                                world_size=self.ctx.world_size)
        return inputs.to(self.ctx.device), targets.to(self.ctx.device)

    def _loss(self, out, stage: Stage) -> torch.Tensor:
        if stage.name == "warmup":
            return self.config.train.kl_coef * out.indexer_loss
        loss = out.loss + self.config.model.aux_loss_coef * out.aux_loss
        if out.indexer_loss is not None:
            loss = loss + self.config.train.kl_coef * out.indexer_loss
        return loss

    def _eval_record(self, stage: Stage, step: int, window: list[float], peak: int | None) -> dict:
        tokens = self.config.train.batch_size * self.config.train.seq_len * self.ctx.world_size
        time_per_step = sum(window) / len(window) if window else float("nan")
        record = {"kind": "eval", "stage": stage.name, "step": step, "position": self._position(self.stage_index, step),
                  "time_per_step": time_per_step, "tokens_per_s": tokens / time_per_step if window else float("nan"),
                  "peak_memory_mb": None if peak is None else peak / 2**20}
        record.update(evaluate(self.model, self.val, stage.mode, self.ctx.device, self.config.train.dtype))
        return record

    def run(self, stop_after: int | None = None) -> dict | None:
        """Train to the end (or for ``stop_after`` more steps, to simulate an interruption).
        Returns the results dict on the main process when training finished, else None."""
        from tqdm import tqdm

        train = self.config.train
        total = self._position(len(self.stages), 0)
        bar = tqdm(total=total, initial=self._position(self.stage_index, self.step), unit="step",
                   disable=not self.progress, dynamic_ncols=True)
        budget = math.inf if stop_after is None else stop_after
        try:
            while self.stage_index < len(self.stages) and budget > 0:
                stage = self.stages[self.stage_index]
                set_trainable(self.model, stage)
                self.optimizer = make_optimizer(self.model, stage, self.config)
                if self.resumed_state is not None and self.resumed_state.get("optimizer") is not None:
                    self.optimizer.load_state_dict(self.resumed_state["optimizer"])
                self.resumed_state = None
                net: nn.Module = self.model
                if self.ctx.distributed:
                    net = DistributedDataParallel(self.model, find_unused_parameters=True,
                                                  device_ids=[self.ctx.device.index] if self.ctx.device.type == "cuda"
                                                  else None)
                window: list[float] = []
                reset_peak_memory(self.ctx.device)
                while self.step < stage.config.steps and budget > 0:
                    factor = lr_factor(stage.config, self.step)
                    for group in self.optimizer.param_groups:
                        group["lr"] = group["base_lr"] * factor
                    inputs, targets = self._batch(stage, self.step)
                    start = time.perf_counter()
                    with _autocast(self.ctx.device, train.dtype):
                        out = net(inputs, targets, mode=stage.mode, keep_selections=False)
                    loss = self._loss(out, stage)
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if train.grad_clip > 0:
                        torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad],
                                                       train.grad_clip)
                    self.optimizer.step()
                    if self.ctx.device.type == "cuda":
                        torch.cuda.synchronize(self.ctx.device)
                    elapsed = time.perf_counter() - start
                    window.append(elapsed)
                    self.train_time += elapsed
                    self.step += 1
                    budget -= 1
                    record = {"kind": "train", "stage": stage.name, "step": self.step,
                              "position": self._position(self.stage_index, self.step), "loss": loss.item(),
                              "lm_loss": out.loss.item(), "lr": self.optimizer.param_groups[0]["lr"],
                              "time": elapsed}
                    if out.indexer_loss is not None:
                        record["indexer_loss"] = out.indexer_loss.item()
                    self.log.write(record)
                    bar.update(1)
                    bar.set_postfix(stage=stage.name, loss=f"{record['loss']:.4g}")
                    finished = self.step == stage.config.steps
                    if self.ctx.is_main and (self.step % train.eval_every == 0 or finished):
                        rec = self._eval_record(stage, self.step, window, peak_memory_since_reset(self.ctx.device))
                        self.log.write(rec)
                        if self.progress:  # --quiet: nothing printed
                            bar.write(_format_eval(rec))
                        window = []
                        reset_peak_memory(self.ctx.device)
                    self.ctx.barrier()
                    if finished:
                        self.stage_index, self.step = self.stage_index + 1, 0
                        self._save(stage)
                        break
                    if train.checkpoint_every and self.step % train.checkpoint_every == 0:
                        self._save(stage)
        finally:
            bar.close()
        if self.stage_index < len(self.stages):
            return None
        results = self._finish() if self.ctx.is_main else None
        self.ctx.barrier()
        return results

    def _finish(self) -> dict:
        records = self.log.read()
        evals = [r for r in records if r["kind"] == "eval"]
        final = {}
        for stage in self.stages:
            stage_evals = [r for r in evals if r["stage"] == stage.name]
            if stage_evals:
                final[stage.name] = stage_evals[-1]
        results = {
            "config": self.config.to_dict(),
            "data": self.data.description,
            "machine": machine_info(self.ctx.device),
            "dispatch": dispatch_record(),  # which implementation ran each op, and any fallback
            "world_size": self.ctx.world_size,
            "precision_note": self.precision_note,
            "pretrained_from": self.pretrained_from,
            "stages": [{"name": s.name, "steps": s.config.steps, "lr": s.config.lr, "mode": s.mode} for s in self.stages],
            "final": final,
            "final_eval": evals[-1] if evals else None,
            "train_time_s": self.train_time,
            "evals": evals,
            "train_losses": [{"stage": r["stage"], "step": r["step"], "position": r["position"], "loss": r["loss"],
                              "lm_loss": r["lm_loss"], **({"indexer_loss": r["indexer_loss"]}
                                                          if "indexer_loss" in r else {})}
                             for r in records if r["kind"] == "train"],
        }
        save_weights(self.model, self.run_dir / "model.safetensors")
        write_json(self.run_dir / "training_results.json", results)
        return results

    def close(self) -> None:
        self.log.close()
        shutdown_distributed(self.ctx)


def _format_eval(record: dict) -> str:
    """One line per evaluation; losses and KL with 4 significant digits (a warm-up KL is ~1e-5)."""
    parts = [f"[{record['stage']} {record['step']}] val loss {record['val_loss']:.4g}",
             f"acc {record['val_accuracy']:.3f}", f"ppl {record['val_perplexity']:.2f}",
             f"{record['time_per_step'] * 1000:.0f} ms/step"]
    for key, label, spec in (("recall", "recall", ".3f"), ("indexer_kl", "KL", ".4g"), ("sparsity", "sparsity", ".3f")):
        if key in record:
            parts.append(f"{label} {record[key]:{spec}}")
    return ", ".join(parts)


#: Config keys a resumed run may change: they extend the schedule or re-time evaluations and
#: checkpoints, and change nothing of what was trained before the checkpoint.
RESUME_MAY_CHANGE = frozenset({"train.main.steps", "train.eval_every", "train.eval_batches", "train.checkpoint_every"})


def config_differences(old: dict, new: dict, prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """``{dotted path: (old value, new value)}`` of the leaves where two config dicts differ."""
    found: dict[str, tuple[Any, Any]] = {}
    for key in sorted(set(old) | set(new)):
        a, b, path = old.get(key), new.get(key), f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            found.update(config_differences(a, b, path + "."))
        elif a != b and not (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and list(a) == list(b)):
            found[path] = (a, b)
    return found


def train(config: RunConfig, run_dir: str | Path, *, resume: bool = False, progress: bool = True,
          data: Any = None, stop_after: int | None = None, pretrained: str | Path | None = None) -> dict | None:
    """Train one run; see :class:`Trainer`. Returns the results (main process) or None."""
    trainer = Trainer(config, run_dir, resume=resume, progress=progress, data=data, pretrained=pretrained)
    try:
        return trainer.run(stop_after=stop_after)
    finally:
        trainer.close()


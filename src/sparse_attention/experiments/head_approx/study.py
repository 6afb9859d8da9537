"""The head-approximation study, step by step (``sparse-attention head-approx``).

1. **teacher**: a dense LM of the harness trained on the embedded corpus (or a given run folder);
2. **signals**: its per-layer q/k/v, head outputs, layer inputs and top-K attended keys on
   training and held-out sequences, written as safetensors shards (:mod:`.signals`);
3. **heads**: every (layer, head) approximated by every variant at every ``K``
   (:mod:`.approximators`) and scored on held-out rows: the normalised error
   ``||approx - head|| / ||head - mean||`` (the constant predictor, the mean training output,
   scores about 1), the seed's relative error ``||approx - head|| / ||head||``, and the
   selection's recall of the teacher's most attended key;
4. **replacement**: the model with one head, one layer's heads, then every head replaced, and
   its held-out loss / perplexity against the teacher's (:mod:`.replacement`);
5. **flops**: the seed's FLOP formulas (its three conventions) on its settings, and ours over
   widths and lengths with the predicted crossovers (:mod:`.flops`);
6. **runtime**: dense heads against each variant, timed in one run over widths and lengths,
   with the measured crossover (:mod:`.runtime`).

``results.json`` is rewritten atomically after each step; ``resume=True`` keeps finished steps.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from ...ops.record import dispatch_record, machine_with_kernel
from ...models.config import ModelConfig
from ...training.config import RunConfig, StageConfig, TrainConfig
from ...data.lm import load_data
from ...training.run_dir import load_model, load_results
from ...training.trainer import train
from ...utils.checks import check_int
from ...utils.results_io import read_json, write_json
from . import flops as flop_model
from . import runtime as runtime_study
from .approximators import (
    VARIANTS,
    TrainSettings,
    fit_head,
    relative_error,
    selection_recall,
    train_indexer,
    train_selector,
)
from .replacement import held_out_loss, replaced_heads
from .signals import read_layer, write_signals

STEPS = ("teacher", "signals", "heads", "replacement", "flops", "runtime")


@dataclass
class HeadApproxConfig:
    """What the study runs; every value is recorded in ``results.json``.

    Attributes:
        quick: the small configuration (under 3 minutes on 2 CPU cores).
        teacher: an existing run folder of a dense LM to study; None trains one into ``OUT/teacher``.
        d_model, n_layers, n_heads, n_kv_heads, seq_len, teacher_steps, batch_size: the teacher
            trained when ``teacher`` is None (on the embedded standard-library text).
        tokenizer, max_chars: its data (``bpe`` with 2048 tokens or ``bytes``; 0 = all the text).
        train_sequences, val_sequences: sequences whose signals train / evaluate the approximators
            (training and held-out split of the text); shard_size: sequences per signal shard.
        k_values: keys per query ``K``; variants: of :data:`~.approximators.VARIANTS`.
        hidden: hidden width of every MLP; fit_steps: Adam steps of each MLP and selector;
            indexer_steps, indexer_heads, indexer_dim: the DSA indexers trained per layer.
        max_rows: query rows each MLP trains on.
        flop_widths, flop_lengths, flop_top_k: grid of our FLOP model.
        runtime_widths, runtime_lengths, runtime_top_k, runtime_repeats: the timed grid.
        seed: of the teacher, the sequences and every small model.
    """

    quick: bool = True
    teacher: str | None = None
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    n_kv_heads: int = 2
    seq_len: int = 256
    teacher_steps: int = 300
    batch_size: int = 8
    tokenizer: str = "bpe"
    max_chars: int = 0
    train_sequences: int = 24
    val_sequences: int = 8
    shard_size: int = 16
    k_values: tuple[int, ...] = (4, 16, 64)
    variants: tuple[str, ...] = tuple(VARIANTS)
    hidden: int = 128
    fit_steps: int = 150
    indexer_steps: int = 60
    indexer_heads: int = 2
    indexer_dim: int = 32
    max_rows: int = 8192
    flop_widths: tuple[int, ...] = (128, 256, 512, 1024, 2048)
    flop_lengths: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
    flop_top_k: int = 32
    runtime_widths: tuple[int, ...] = (128, 256)
    runtime_lengths: tuple[int, ...] = (256, 1024)
    runtime_top_k: int = 32
    runtime_repeats: int = 3
    seed: int = 0
    steps: tuple[str, ...] = STEPS

    def __post_init__(self) -> None:
        for name in ("d_model", "n_layers", "n_heads", "n_kv_heads", "seq_len", "teacher_steps", "batch_size",
                     "train_sequences", "val_sequences", "shard_size", "hidden", "fit_steps", "indexer_steps",
                     "indexer_heads", "indexer_dim", "max_rows", "flop_top_k", "runtime_top_k", "runtime_repeats"):
            check_int(name, getattr(self, name))
        check_int("seed", self.seed, 0)
        for name in ("k_values", "flop_widths", "flop_lengths", "runtime_widths", "runtime_lengths"):
            values = tuple(getattr(self, name))
            if not values:
                raise ValueError(f"{name} must hold at least one value")
            for value in values:
                check_int(name, value)
            setattr(self, name, tuple(sorted(set(values))))
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown or not self.variants:
            raise ValueError(f"variants: expected some of {list(VARIANTS)}, got {list(self.variants)}")
        bad = [s for s in self.steps if s not in STEPS]
        if bad:
            raise ValueError(f"steps: unknown {bad}; expected some of {list(STEPS)}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")

    @classmethod
    def full(cls, **changes: Any) -> HeadApproxConfig:
        """The full configuration: a 4-layer teacher at N = 512, four K, wider FLOP and runtime grids."""
        base = dict(quick=False, d_model=128, n_layers=4, n_heads=4, n_kv_heads=4, seq_len=512, teacher_steps=1500,
                    train_sequences=64, val_sequences=16, k_values=(2, 8, 32, 128), fit_steps=400,
                    indexer_steps=300, indexer_heads=4, indexer_dim=32, max_rows=16384,
                    runtime_widths=(128, 256, 512, 1024), runtime_lengths=(256, 1024, 4096), runtime_repeats=5)
        return cls(**{**base, **changes})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def teacher_run_config(cfg: HeadApproxConfig) -> RunConfig:
    """The dense teacher's run config (stdlib text, BPE 2048, MoE feed-forward as the harness has it)."""
    model = ModelConfig(attention="dense", d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
                        n_kv_heads=cfg.n_kv_heads, d_ff=2 * cfg.d_model, n_experts=2, expert_top_k=1)
    stage = StageConfig(steps=cfg.teacher_steps, lr=3e-3, lr_warmup_steps=min(50, cfg.teacher_steps // 10))
    train_cfg = TrainConfig(batch_size=cfg.batch_size, seq_len=cfg.seq_len, main=stage, seed=cfg.seed,
                            eval_every=max(1, cfg.teacher_steps // 4), eval_batches=2)
    return RunConfig(model=model, train=train_cfg).with_changes(
        data={"bpe_vocab_size": 2048, "tokenizer": cfg.tokenizer, "max_chars": cfg.max_chars})


def _settings(config: dict[str, Any]) -> dict[str, Any]:
    """A config as stored in JSON (tuples as lists), without the steps asked for: a resumed run may
    run other steps of the same study."""
    return {k: v for k, v in json.loads(json.dumps(config)).items() if k != "steps"}


@dataclass
class Study:
    """One run of the study into ``out_dir`` (see the module docstring)."""

    config: HeadApproxConfig
    out_dir: Path
    progress: Callable[[Iterable, str], Iterable] = field(default=lambda items, desc: items)
    log: Callable[[str], None] = field(default=lambda line: None)

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.results_path = self.out_dir / "results.json"
        self.settings = TrainSettings(steps=self.config.fit_steps, seed=self.config.seed)
        self._loaded = None  # (teacher run folder, what _sequences returns)

    # ------------------------------------------------------------------ steps
    def teacher(self) -> dict[str, Any]:
        cfg = self.config
        run_dir = Path(cfg.teacher) if cfg.teacher else self.out_dir / "teacher"
        if cfg.teacher is None and not (run_dir / "training_results.json").exists():
            train(teacher_run_config(cfg), run_dir, progress=False)
        results = load_results(run_dir)
        final = results["final_eval"]
        return {"run_dir": str(run_dir), "trained_here": cfg.teacher is None, "data": results["data"],
                "model": results["config"]["model"], "seq_len": results["config"]["train"]["seq_len"],
                "val_loss": final["val_loss"], "val_perplexity": final["val_perplexity"],
                "train_time_s": results["train_time_s"]}

    def _sequences(self, teacher: dict[str, Any]):
        """``(model, run config, {split: [input_ids]}, held-out (inputs, targets) batches)``, loaded
        once per teacher and shared by the steps (every hook a step adds is removed again)."""
        if self._loaded is not None and self._loaded[0] == teacher["run_dir"]:
            return self._loaded[1]
        cfg = self.config
        model, run_cfg = load_model(teacher["run_dir"])
        data = load_data(run_cfg.data, run_cfg.train.seq_len, seed=cfg.seed + 1)
        steps = range(cfg.train_sequences // cfg.batch_size + (cfg.train_sequences % cfg.batch_size > 0))
        train_ids = [data.train_batch(10**6 + s, cfg.batch_size)[0] for s in steps]  # past the teacher's steps
        val = data.val_batches(max(1, -(-cfg.val_sequences // cfg.batch_size)), cfg.batch_size)
        loaded = (model, run_cfg, {"train": train_ids, "val": [x for x, _ in val]}, val)
        self._loaded = (teacher["run_dir"], loaded)
        return loaded

    def signals(self, teacher: dict[str, Any]) -> dict[str, Any]:
        model, _, batches, _ = self._sequences(teacher)
        meta = {"teacher": teacher["run_dir"], "seed": self.config.seed}
        return write_signals(model, batches, self.out_dir / "signals", top_k=max(self.config.k_values),
                             shard_size=self.config.shard_size, meta=meta, progress=self.progress)

    def heads(self, teacher: dict[str, Any]) -> tuple[list[dict[str, Any]], dict]:
        """Fit every variant for every head and ``K``; returns the rows and the fitted approximations."""
        cfg = self.config
        model, run_cfg, _, _ = self._sequences(teacher)
        h, h_kv = run_cfg.model.n_heads, run_cfg.model.n_kv_heads
        g = h // h_kv
        rows, fitted = [], {}
        for layer in self.progress(range(run_cfg.model.n_layers), "heads (layers)"):
            train_sig = read_layer(self.out_dir / "signals", "train", layer)
            val_sig = read_layer(self.out_dir / "signals", "val", layer)
            indexer = None
            if any(VARIANTS[v][0] == "dsa" for v in cfg.variants):
                ind_settings = TrainSettings(steps=cfg.indexer_steps, batch=4 * cfg.seq_len, lr=1e-3, seed=cfg.seed)
                indexer = train_indexer(train_sig["x"], train_sig["q"], train_sig["k"], heads=cfg.indexer_heads,
                                        head_dim=cfg.indexer_dim, rope_theta=run_cfg.model.rope_theta,
                                        s=ind_settings)
            for head in range(h):
                one = {split: {"q": sig["q"][:, head], "k": sig["k"][:, head // g], "v": sig["v"][:, head // g],
                               "out": sig["out"][:, head], "x": sig["x"], "top_idx": sig["top_idx"][:, head]}
                       for split, sig in (("train", train_sig), ("val", val_sig))}
                constant = one["train"]["out"].reshape(-1, one["train"]["out"].shape[-1]).mean(0)  # [D]
                constant_err = relative_error(constant.expand_as(one["val"]["out"]), one["val"]["out"])
                constant_norm_err = relative_error(constant.expand_as(one["val"]["out"]), one["val"]["out"], constant)
                selector = None
                if "seed" in cfg.variants:
                    selector = train_selector(one["train"]["q"], one["train"]["top_idx"][..., 0], cfg.seq_len,
                                              cfg.hidden, self.settings)
                top1 = one["val"]["top_idx"][..., 0]
                for variant in cfg.variants:
                    for top_k in cfg.k_values:
                        approx = fit_head(variant, top_k, one["train"], hidden=cfg.hidden, s=self.settings,
                                          selector=selector, indexer=indexer, max_rows=cfg.max_rows)
                        v = one["val"]
                        pred = approx.predict(v["q"], v["k"], v["v"], v["x"])
                        rows.append({"layer": layer, "head": head, "variant": variant, "top_k": top_k,
                                     "val_norm_error": relative_error(pred, v["out"], constant),
                                     "constant_norm_error": constant_norm_err,
                                     "val_rel_error": relative_error(pred, v["out"]),
                                     "constant_rel_error": constant_err,
                                     "top1_recall": selection_recall(approx.keys(v["q"], v["k"], v["x"]), top1),
                                     "train_mse": approx.info.get("train_mse")})
                        fitted[(layer, head, variant, top_k)] = approx
        return rows, fitted

    def replacement(self, teacher: dict[str, Any], fitted: dict) -> list[dict[str, Any]]:
        cfg = self.config
        model, run_cfg, _, val = self._sequences(teacher)
        base = held_out_loss(model, val)
        layers, heads = run_cfg.model.n_layers, run_cfg.model.n_heads
        scopes = {"one head (layer 0, head 0)": [(0, 0)], "one layer (layer 0, all heads)": [(0, h) for h in range(heads)],
                  "all heads": [(l, h) for l in range(layers) for h in range(heads)]}
        rows = [{"scope": "teacher", "variant": None, "top_k": None, **base, "delta_loss": 0.0}]
        for scope, targets in self.progress(list(scopes.items()), "replacement"):
            for variant in cfg.variants:
                for top_k in cfg.k_values:
                    with replaced_heads(model, {t: fitted[(*t, variant, top_k)] for t in targets}):
                        measured = held_out_loss(model, val)
                    rows.append({"scope": scope, "heads_replaced": len(targets), "variant": variant, "top_k": top_k,
                                 **measured, "delta_loss": measured["loss"] - base["loss"]})
        return rows

    def flops(self) -> dict[str, Any]:
        cfg = self.config
        grid = flop_model.our_grid(list(cfg.flop_widths), list(cfg.flop_lengths), cfg.flop_top_k, hidden=cfg.hidden,
                                   indexer_heads=cfg.indexer_heads, indexer_dim=cfg.indexer_dim)
        crossovers = {}
        for selection in flop_model.SELECTIONS:
            for head in flop_model.HEADS:
                name = f"{selection}+{head}"
                crossovers[name] = {str(w): flop_model.crossover_length(
                    w, 64, selection, head, cfg.flop_top_k, lengths=list(cfg.flop_lengths), hidden=cfg.hidden,
                    indexer_heads=cfg.indexer_heads, indexer_dim=cfg.indexer_dim) for w in cfg.flop_widths}
        return {"seed_table": flop_model.seed_table(), "seed_settings": {
            "top_k": flop_model.SEED_TOP_K, "selector_hidden": flop_model.SEED_HIDDEN,
            "approx_hidden": flop_model.SEED_HIDDEN}, "ours": grid, "crossovers": crossovers,
            "top_k": cfg.flop_top_k, "head_dim": 64}

    def runtime(self) -> dict[str, Any]:
        cfg = self.config
        rows = runtime_study.measure(list(cfg.runtime_widths), list(cfg.runtime_lengths), cfg.runtime_top_k,
                                     head_dim=64, hidden=cfg.hidden, indexer_heads=cfg.indexer_heads,
                                     indexer_dim=cfg.indexer_dim, repeats=cfg.runtime_repeats,
                                     variants=tuple(cfg.variants), seed=cfg.seed, progress=self.progress)
        measured = {v: {str(w): t for w, t in runtime_study.measured_crossover(rows, v).items()} for v in cfg.variants}
        predicted = {}
        for v in cfg.variants:
            selection, head = VARIANTS[v]
            model_head = "mlp" if head == "seed_mlp" else head
            predicted[v] = {str(w): flop_model.crossover_length(w, 64, selection, model_head, cfg.runtime_top_k,
                                                                lengths=list(cfg.runtime_lengths), hidden=cfg.hidden,
                                                                indexer_heads=cfg.indexer_heads,
                                                                indexer_dim=cfg.indexer_dim)
                            for w in cfg.runtime_widths}
        return {"rows": rows, "measured_crossover": measured, "predicted_crossover": predicted,
                "threads": torch.get_num_threads(), "timer": "time_interleaved (dense and every variant per round),"
                f" median of {cfg.runtime_repeats} rounds after 1 warm-up round"}

    # ------------------------------------------------------------------ driver
    def run(self, resume: bool = False) -> dict[str, Any]:
        cfg = self.config
        previous = read_json(self.results_path) if resume and self.results_path.exists() else {}
        if previous and _settings(previous.get("config", {})) != _settings(cfg.to_dict()):
            raise ValueError(f"{self.results_path} was made with another configuration; drop --resume or"
                             " choose another --output-dir")
        results = {"format_version": 1, "config": cfg.to_dict(), "machine": machine_with_kernel("cpu"),
                   "steps": dict(previous.get("steps", {})), "runtime_s": dict(previous.get("runtime_s", {}))}
        torch.manual_seed(cfg.seed)
        fitted = None
        for step in STEPS:
            if step not in cfg.steps:
                continue
            if step in results["steps"]:
                self.log(f"{step}: kept from the previous run")
                continue
            start = time.perf_counter()
            teacher = results["steps"].get("teacher")
            if step == "teacher":
                results["steps"]["teacher"] = self.teacher()
            elif step == "signals":
                results["steps"]["signals"] = self.signals(teacher)
            elif step in ("heads", "replacement"):
                if fitted is None:  # the replacement needs the fitted heads (refitted on resume: same seeds)
                    rows, fitted = self.heads(teacher)
                    results["steps"]["heads"] = {"rows": rows}
                if step == "replacement":
                    results["steps"]["replacement"] = {"rows": self.replacement(teacher, fitted)}
            elif step == "flops":
                results["steps"]["flops"] = self.flops()
            else:
                results["steps"]["runtime"] = self.runtime()
            results["runtime_s"][step] = time.perf_counter() - start
            self.log(f"{step}: {results['runtime_s'][step]:.1f} s")
            results["dispatch"] = dispatch_record()  # which implementation ran each op, and any fallback
            write_json(self.results_path, results)
        results["runtime_s"]["total"] = sum(v for k, v in results["runtime_s"].items() if k != "total")
        write_json(self.results_path, results)
        return results

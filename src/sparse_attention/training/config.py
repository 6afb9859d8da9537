"""Nested, validated configuration of the language-model harness, with presets and overrides.

A run is ``RunConfig(model=ModelConfig, train=TrainConfig, data=DataConfig)``. Every field is
checked on construction (``__post_init__``), so a bad value fails before any training starts,
with a message naming the field. ``apply_overrides(config, ["train.main.steps=100"])`` is what
``--set`` calls: values are parsed as JSON when possible (numbers, booleans, lists, dicts) and
otherwise taken as strings, converted to the type of the field they replace, and the whole
config is re-validated.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from ..data.lm.config import DataConfig
from ..models.config import ModelConfig
from ..utils.checks import check_config_int, check_number


@dataclass
class StageConfig:
    """One training stage: ``steps`` optimizer steps, linear warm-up then cosine decay of the lr.

    Attributes:
        steps: optimizer steps (``0`` skips the stage).
        lr: peak learning rate.
        lr_warmup_steps: linear warm-up steps of the learning rate.
        min_lr_ratio: final lr as a fraction of ``lr`` (cosine decay).
    """

    steps: int
    lr: float
    lr_warmup_steps: int = 0
    min_lr_ratio: float = 0.1

    def __post_init__(self) -> None:
        check_config_int("stage", "steps", self.steps, allow_zero=True)
        check_number("stage", "lr", self.lr)
        check_config_int("stage", "lr_warmup_steps", self.lr_warmup_steps, allow_zero=True)
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"stage.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")


@dataclass
class TrainConfig:
    """Training of one run. Every run may start with ``pretrain`` (dense attention, all
    parameters: DeepSeek-V3.2 starts DSA from a trained dense checkpoint). DSA runs then do
    ``warmup`` (indexer only, dense attention, KL to the dense attention) and ``main`` (sparse
    attention, all parameters); every other run does ``main`` only. Dense and sparse runs with
    one config see the same batches in the same order and start from the same weights, so
    after ``pretrain`` they are identical except for the indexers.

    Attributes:
        batch_size, seq_len: sequences per step and tokens per sequence.
        pretrain: dense pre-training of the whole model before anything else (0 steps = none).
        warmup: the DSA dense warm-up stage (DeepSeek-V3.2: lr 1e-3).
        main: the main stage (sparse training, or the dense baseline).
        indexer_lr: learning rate of the indexer during the main stage (its KL loss only).
        kl_coef: weight of the indexer KL loss.
        weight_decay, grad_clip, betas: AdamW settings and gradient-norm clipping (0 = off).
        eval_every, eval_batches: evaluation period (steps) and validation batches per eval.
        checkpoint_every: checkpoint period in steps (0 = only at stage ends).
        seed: seeds parameters, data order and dropout.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        precision: ``fp32`` or ``bf16``, the run's one precision setting: bf16 autocast plus the
            DSA indexer scored in bf16, where the device has bf16 arithmetic, else fp32 with a
            warning (:mod:`.precision`).
        dtype: the autocast dtype :mod:`.precision` derives from ``precision`` (``float32``, or
            ``bfloat16`` under ``bf16``); not a setting of its own (``bfloat16`` with ``fp32`` is an error).
    """

    batch_size: int = 16
    seq_len: int = 128
    pretrain: StageConfig = field(default_factory=lambda: StageConfig(steps=0, lr=3e-3))
    warmup: StageConfig = field(default_factory=lambda: StageConfig(steps=200, lr=1e-3))
    main: StageConfig = field(default_factory=lambda: StageConfig(steps=3000, lr=3e-3, lr_warmup_steps=100))
    indexer_lr: float = 1e-3
    kl_coef: float = 1.0
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    betas: tuple = (0.9, 0.95)
    eval_every: int = 100
    eval_batches: int = 8
    checkpoint_every: int = 0
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"
    precision: str = "fp32"

    def __post_init__(self) -> None:
        owner = "train"
        if isinstance(self.pretrain, dict):
            self.pretrain = StageConfig(**self.pretrain)
        if isinstance(self.warmup, dict):
            self.warmup = StageConfig(**self.warmup)
        if isinstance(self.main, dict):
            self.main = StageConfig(**self.main)
        for name in ("batch_size", "seq_len", "eval_every", "eval_batches"):
            check_config_int(owner, name, getattr(self, name))
        check_config_int(owner, "checkpoint_every", self.checkpoint_every, allow_zero=True)
        check_config_int(owner, "seed", self.seed, allow_zero=True)
        for name in ("indexer_lr", "kl_coef"):
            check_number(owner, name, getattr(self, name))
        for name in ("weight_decay", "grad_clip"):
            check_number(owner, name, getattr(self, name), allow_zero=True)
        self.betas = tuple(self.betas)
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"train.betas must be two numbers in [0, 1), got {self.betas!r}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"train.dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"train.precision must be 'fp32' or 'bf16', got {self.precision!r}")
        if not isinstance(self.device, str) or self.device.split(":")[0] not in ("auto", "cpu", "cuda", "mps"):
            raise ValueError(f"train.device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")


@dataclass
class RunConfig:
    """Everything one training run needs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = ModelConfig(**self.model)
        if isinstance(self.train, dict):
            self.train = TrainConfig(**self.train)
        if isinstance(self.data, dict):
            self.data = DataConfig(**self.data)
        self._check_precision()

    def _check_precision(self) -> None:
        """``train.precision`` is the one precision setting: the autocast dtype and the DSA indexer's
        arithmetic follow from it (:func:`~sparse_attention.training.precision.apply_precision`)."""
        if self.train.precision == "bf16":
            return  # apply_precision turns bf16 on where the device has it
        if self.train.dtype != "float32":
            raise ValueError(f"train.dtype ({self.train.dtype!r}) conflicts with train.precision ('fp32'): set"
                             " train.precision=bf16, the one precision setting (train.dtype follows from it)")
        indexer = self.model.method_params.get("precision", "float32")
        if indexer != "float32":
            raise ValueError(f"model.method_params.precision ({indexer!r}) conflicts with train.precision ('fp32'):"
                             " set train.precision=bf16, the one precision setting (the indexer's follows from it)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RunConfig:
        return cls(**data)

    def with_changes(self, **sections: dict) -> RunConfig:
        """A new, validated config: this one with ``section={field: value}`` changes, e.g.
        ``config.with_changes(model={"attention": "dense"})``. This one is left as it is."""
        data = self.to_dict()
        for section, changes in sections.items():
            if section not in data:
                raise ValueError(f"unknown config section {section!r}; expected one of {sorted(data)}")
            unknown = sorted(set(changes) - set(data[section]))
            if unknown:
                raise ValueError(f"unknown {section} fields {unknown}; expected some of {sorted(data[section])}")
            data[section].update(changes)
        return RunConfig.from_dict(data)

    def with_paths(self, changes: dict[str, Any]) -> RunConfig:
        """A new, validated config with values set by dotted path, e.g.
        ``config.with_paths({"train.main.steps": 100, "model.top_k": 32})``. This one is left as it is."""
        data = self.to_dict()
        for path, value in changes.items():
            node, leaf = _locate(data, path, "config path")
            node[leaf] = value
        return RunConfig.from_dict(data)


def _locate(data: dict, path: str, what: str) -> tuple[dict, str]:
    """``(the dict holding the leaf, the leaf name)`` of ``a.b.c`` in a config dict; ValueError naming
    ``what`` (e.g. ``--set``) and the path when a section or key does not exist."""
    keys = path.strip().split(".")
    node = data
    for depth, key in enumerate(keys[:-1]):
        if not isinstance(node, dict) or key not in node or not isinstance(node[key], dict):
            raise ValueError(f"{what} {path}: unknown config section {'.'.join(keys[:depth + 1])!r}")
        node = node[key]
    if keys[-1] not in node:
        raise ValueError(f"{what} {path}: unknown key {keys[-1]!r}; known keys here: {', '.join(sorted(node))}")
    return node, keys[-1]


def _stage(steps: int, lr: float, lr_warmup_steps: int = 0) -> StageConfig:
    return StageConfig(steps=steps, lr=lr, lr_warmup_steps=lr_warmup_steps)


#: Presets: ``tiny`` for tests, ``small`` for a CPU, ``medium`` = the DSA seed's setting,
#: ``large`` for a GPU at long context, ``wide`` for speed studies of DSA at a realistic ratio of
#: indexer to attention width (docs/lm.md: its 4 x 64 indexer spends 1/8 of the multiply-adds per
#: query-key pair of its 16 x 64 attention; DeepSeek-V3.2's 64 x 128 indexer 1/5 of its
#: 128 x (192 + 128) attention, and in FP8).
PRESETS: dict[str, dict] = {
    "tiny": dict(
        model=dict(d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, d_ff=64, n_experts=2, expert_top_k=1,
                   top_k=8, indexer_heads=2, indexer_head_dim=16),
        train=dict(batch_size=2, seq_len=32, warmup=_stage(2, 1e-3), main=_stage(3, 3e-3), eval_every=2,
                   eval_batches=1),
        data=dict(tokenizer="bytes", max_chars=200_000),
    ),
    "small": dict(
        model=dict(d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=256, n_experts=4, expert_top_k=2,
                   top_k=64, indexer_heads=4, indexer_head_dim=32),
        train=dict(batch_size=8, seq_len=256, warmup=_stage(100, 1e-3), main=_stage(600, 3e-3, 50), eval_every=50,
                   eval_batches=4),
        data=dict(bpe_vocab_size=2048),
    ),
    "medium": dict(
        model=dict(d_model=256, n_layers=6, n_heads=8, n_kv_heads=8, d_ff=512, n_experts=4, expert_top_k=2,
                   top_k=64, indexer_heads=4, indexer_head_dim=64),
        train=dict(batch_size=16, seq_len=128, warmup=_stage(200, 1e-3), main=_stage(3000, 3e-3, 100),
                   eval_every=100, eval_batches=8),
        data=dict(),
    ),
    "wide": dict(
        model=dict(d_model=1024, n_layers=2, n_heads=16, n_kv_heads=4, d_ff=1024, n_experts=4, expert_top_k=2,
                   top_k=512, indexer_heads=4, indexer_head_dim=64),
        train=dict(batch_size=1, seq_len=4096, warmup=_stage(100, 1e-3), main=_stage(300, 1e-3, 30), eval_every=50,
                   eval_batches=2),
        data=dict(bpe_vocab_size=2048),
    ),
    "large": dict(
        model=dict(d_model=512, n_layers=12, n_heads=8, n_kv_heads=2, d_ff=1024, n_experts=8, expert_top_k=2,
                   top_k=512, indexer_heads=8, indexer_head_dim=64),
        train=dict(batch_size=16, seq_len=2048, warmup=_stage(500, 1e-3), main=_stage(10000, 1e-3, 500),
                   eval_every=250, eval_batches=16, checkpoint_every=1000),
        data=dict(bpe_vocab_size=8192),
    ),
}


def preset(name: str, attention: str | None = None) -> RunConfig:
    """The preset ``name`` (``tiny``, ``small``, ``medium``, ``wide``, ``large``), optionally with its
    attention method replaced."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    parts = {key: dict(value) for key, value in PRESETS[name].items()}
    if attention is not None:
        parts["model"]["attention"] = attention
    return RunConfig(model=ModelConfig(**parts["model"]), train=TrainConfig(**parts["train"]),
                     data=DataConfig(**parts["data"]))


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _coerce(path: str, old: Any, new: Any) -> Any:
    """Convert ``new`` to the type of the value it replaces (int -> float is allowed)."""
    if isinstance(old, bool):
        if not isinstance(new, bool):
            raise ValueError(f"--set {path}: expected true or false, got {new!r}")
        return new
    if isinstance(old, float) and isinstance(new, int) and not isinstance(new, bool):
        return float(new)
    if isinstance(old, tuple) and isinstance(new, list):
        return tuple(new)
    if old is not None and not isinstance(new, type(old)):
        raise ValueError(f"--set {path}: expected a {type(old).__name__}, got {new!r}")
    return new


def apply_overrides(config: RunConfig, overrides: list[str]) -> RunConfig:
    """A copy of ``config`` with ``["a.b=value", ...]`` applied and every section re-validated."""
    data = config.to_dict()
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE (e.g. train.main.steps=100), got {item!r}")
        path, text = item.split("=", 1)
        node, leaf = _locate(data, path, "--set")
        node[leaf] = _coerce(path, node[leaf], _parse_value(text.strip()))
    return RunConfig.from_dict(data)

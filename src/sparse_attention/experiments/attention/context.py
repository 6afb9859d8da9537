"""Configuration and shared context of the attention-level experiment suite."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

import torch

from ...selection.base import budget_params, get_method, list_methods
from ...utils.checks import check_int


def all_methods() -> tuple[str, ...]:
    """Every registered method, in registration (and report) order: the suite's default."""
    return tuple(spec.name for spec in list_methods())


QUICK_LENGTHS = (512, 1024, 2048)
FULL_LENGTHS = (512, 1024, 2048, 4096, 8192)
#: ``--long``: the scalability experiment alone at these lengths, in these head layouts (GQA, MQA).
LONG_LENGTHS = (8192, 16384, 32768)
LONG_HEAD_LAYOUTS = ("4:2", "4:1")


def parse_head_layout(layout: str) -> tuple[int, int]:
    """``"H:H_kv"`` -> ``(H, H_kv)`` with ``H % H_kv == 0``; ValueError naming ``head_layouts`` otherwise."""
    try:
        heads, kv_heads = (int(part) for part in str(layout).split(":"))
    except ValueError:
        raise ValueError(f"head_layouts: expected 'H:H_kv' such as '4:2', got {layout!r}") from None
    if heads < 1 or kv_heads < 1 or heads % kv_heads:
        raise ValueError(f"head_layouts: {layout!r} needs H >= 1, H_kv >= 1 and H % H_kv == 0")
    return heads, kv_heads


@dataclass
class SuiteConfig:
    """What the suite runs. Every size below is recorded in ``results.json``.

    Attributes:
        quick: the small configuration (under 5 minutes on 2 CPU cores).
        device: ``cpu``, ``cuda`` or ``mps`` (``npu`` is rejected before this is built).
        methods: methods to compare (dense is always included as the reference); default
            every registered method.
        lengths: sequence lengths N of the length sweeps.
        seed: seed of every generated input and randomised method.
        budget: keys per query of the fixed-budget methods (the ``budget_param`` of their
            spec: ``local`` window, ``topk`` and ``dsa`` top-k); 256 matches the seed study's
            Local-256.
        heads, kv_heads, head_dim: attention shape of generated inputs (GQA 4:2, D=64).
        head_layouts: ``"H:H_kv"`` layouts the scalability experiment measures, each in turn
            (e.g. ``("4:2", "4:1")``: GQA next to MQA); empty = ``heads:kv_heads`` alone.
    """

    quick: bool = True
    device: str = "cpu"
    methods: tuple[str, ...] = field(default_factory=all_methods)
    lengths: tuple[int, ...] = QUICK_LENGTHS
    seed: int = 0
    budget: int = 256
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 64
    experiments: tuple[str, ...] = ()
    head_layouts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        known = {m.name for m in list_methods()}
        unknown = [m for m in self.methods if m not in known]
        if unknown:
            raise ValueError(f"methods: unknown {unknown}; expected some of {sorted(known)}")
        if "dense" not in self.methods:
            self.methods = ("dense", *self.methods)
        self.methods = tuple(dict.fromkeys(self.methods))
        if not self.lengths:
            raise ValueError("lengths must hold at least one length")
        for n in self.lengths:
            check_int("lengths", n, 16)
        self.lengths = tuple(sorted(set(self.lengths)))
        for layout in self.head_layouts:
            parse_head_layout(layout)
        self.head_layouts = tuple(dict.fromkeys(self.head_layouts))
        if self.budget <= 0:
            raise ValueError(f"budget must be positive, got {self.budget}")
        if self.device not in ("cpu", "cuda", "mps"):
            raise ValueError(f"device must be cpu, cuda or mps, got {self.device!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def layouts(self) -> list[tuple[int, int]]:
        """``(H, H_kv)`` of every head layout the scalability experiment measures."""
        return [parse_head_layout(x) for x in self.head_layouts] or [(self.heads, self.kv_heads)]


def method_settings(method: str, config: SuiteConfig) -> dict[str, Any]:
    """The documented default setting of each method in the suite.

    Fixed-budget methods (a ``budget_param`` in their spec) get ``config.budget`` keys per
    query; the clustering and hashing methods run at their own defaults (``sparse-attention methods``) with the suite seed.
    ``dsa`` uses the untrained random-projection indexer (4 heads x 64, see
    ``selection.dsa.random_indexer``): what DSA selects before any indexer training.
    """
    params = budget_params(method, config.budget)
    if "seed" in get_method(method).defaults():
        params = {**params, "seed": config.seed}
    return params


@dataclass
class RunContext:
    """What an experiment needs besides its config: the device and a progress wrapper."""

    config: SuiteConfig
    progress: Callable[[Iterable, str], Iterable] = field(default=lambda items, desc: items)

    @property
    def device(self) -> torch.device:
        return torch.device(self.config.device)

    def settings(self, method: str) -> dict[str, Any]:
        return method_settings(method, self.config)

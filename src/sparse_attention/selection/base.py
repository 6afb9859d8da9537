"""The ``Selection`` type and the registry of selection methods.

A selection method is a function ``select(q, k, *, causal, **params) -> Selection`` taking
``q [B, H, N_q, D]`` and ``k [B, H_kv, N_k, D]``. It is registered with its parameters,
their defaults, documentation and source, so that the CLI (``sparse-attention methods``),
the experiments and the layer all read the same table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from torch import Tensor


@dataclass
class Selection:
    """Which keys each query may attend to.

    Attributes:
        indices: ``[B, H_sel, N_q, K]`` int64 key positions, ``-1`` = empty slot;
            ``H_sel`` in {1, H_kv, H}. Rows hold no duplicates.
        n_keys: ``N_k``, the number of keys the indices refer to.
        causal: whether the selection was made for causal attention.
        method: registered name of the method that produced it.
        info: method-specific report (cluster counts, hash rounds, ...), JSON-friendly.
    """

    indices: Tensor
    n_keys: int
    causal: bool
    method: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def top_k(self) -> int:
        """Slots per query row (``K``)."""
        return self.indices.shape[-1]


@dataclass(frozen=True)
class Param:
    """A documented hyperparameter of a selection method."""

    name: str
    default: Any
    doc: str
    source: str = ""


@dataclass(frozen=True)
class MethodSpec:
    """A registered selection method."""

    name: str
    select: Callable[..., Selection]
    params: tuple[Param, ...]
    summary: str
    reference: str

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def check_params(self, params: dict[str, Any]) -> None:
        """Raise ``ValueError`` for a parameter this method does not take."""
        known = {p.name for p in self.params}
        for name in params:
            if name not in known:
                expected = ", ".join(sorted(known)) or "none"
                raise ValueError(f"method {self.name!r} has no parameter {name!r}; parameters: {expected}")


_METHODS: dict[str, MethodSpec] = {}


def register_method(name: str, *, params: list[Param], summary: str, reference: str):
    """Decorator registering ``fn(q, k, *, causal, **params) -> Selection`` under ``name``."""

    def decorate(fn: Callable[..., Selection]) -> Callable[..., Selection]:
        _METHODS[name] = MethodSpec(name, fn, tuple(params), summary, reference)
        return fn

    return decorate


def get_method(name: str) -> MethodSpec:
    """The registered method ``name``; ``ValueError`` listing the known names otherwise."""
    if not isinstance(name, str):
        raise TypeError(f"method must be a string, got {type(name).__name__}")
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; expected one of: {', '.join(_METHODS)}")
    return _METHODS[name]


def list_methods() -> list[MethodSpec]:
    """All registered methods in registration order."""
    return list(_METHODS.values())


def select(q: Tensor, k: Tensor, method: str, *, causal: bool = True, **params: Any) -> Selection:
    """Run the selection method ``method`` on ``q [B, H, N_q, D]``, ``k [B, H_kv, N_k, D]``."""
    from ..ops.validation import check_qkv

    spec = get_method(method)
    spec.check_params(params)
    check_qkv(q, k, k)
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    return spec.select(q, k, causal=causal, **{**spec.defaults(), **params})

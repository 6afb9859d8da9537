"""The ``Selection`` type and the registry of selection methods.

A selection method is a function ``select(q, k, *, causal, **params) -> Selection`` taking
``q [B, H, N_q, D]`` and ``k [B, H_kv, N_k, D]``. It is registered with everything the rest of
the package knows about it: its parameters (defaults, documentation, source), which parameter
is its key budget, its cost model, its display name, colour and marker, and the settings the
Pareto experiment sweeps. The CLI (``sparse-attention methods``), the layer, the LM, the demo,
every experiment of the suite and every plot read this one table, so a new method is its
selector file (plus one import line in ``selection/__init__.py``) and its tests.
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


#: ``cost(selection, params, *, heads, kv_heads, head_dim, dtype_bytes) -> (FLOPs, elements read)``
#: of one batch element's selection (see :mod:`sparse_attention.selection.costs`).
CostModel = Callable[..., "tuple[float, float]"]
#: ``sweep(quick) -> [params, ...]``: settings the Pareto experiment tries besides the default.
Sweep = Callable[[bool], "list[dict[str, Any]]"]
#: ``full_coverage(n_keys) -> params`` under which the method selects every visible key.
FullCoverage = Callable[[int], "dict[str, Any]"]


@dataclass(frozen=True)
class MethodSpec:
    """A registered selection method.

    Attributes:
        name, select, params, summary, reference: the method, its parameters and sources.
        budget_param: the parameter that is the method's keys per query (``window``,
            ``top_k``), set to the suite's budget and swept as fractions of it; None for
            methods whose edges follow from the data (clustering, hashing).
        cost: the selection's counted cost model, or None (the energy and Pareto experiments
            then report the selection's cost as not modelled).
        sweep: the Pareto experiment's other settings (besides the budget sweep), or None.
        full_coverage: parameters under which the method selects every visible key of
            ``n_keys`` (then its attention equals dense attention), or None; the tests of
            every method use it.
        label, color, marker: how reports and plots show the method.
        masks_keys: ``select`` takes ``key_mask=`` itself and keeps padded keys out before
            choosing (else :func:`select` drops them from the rows afterwards).
    """

    name: str
    select: Callable[..., Selection]
    params: tuple[Param, ...]
    summary: str
    reference: str
    budget_param: str | None = None
    cost: CostModel | None = None
    sweep: Sweep | None = None
    full_coverage: FullCoverage | None = None
    label: str = ""
    color: str = "tab:brown"
    marker: str = "X"
    masks_keys: bool = False

    def __post_init__(self) -> None:
        if self.budget_param is not None and self.budget_param not in {p.name for p in self.params}:
            raise ValueError(f"method {self.name!r}: budget_param {self.budget_param!r} is not one of its parameters")
        if not self.label:
            object.__setattr__(self, "label", self.name)

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


def register_method(name: str, *, params: list[Param], summary: str, reference: str, budget_param: str | None = None,
                    cost: CostModel | None = None, sweep: Sweep | None = None,
                    full_coverage: FullCoverage | None = None, label: str = "",
                    color: str = "tab:brown", marker: str = "X", masks_keys: bool = False):
    """Decorator registering ``fn(q, k, *, causal, **params) -> Selection`` under ``name``; the
    keyword arguments are the :class:`MethodSpec` fields."""

    def decorate(fn: Callable[..., Selection]) -> Callable[..., Selection]:
        _METHODS[name] = MethodSpec(name, fn, tuple(params), summary, reference, budget_param=budget_param,
                                    cost=cost, sweep=sweep, full_coverage=full_coverage, label=label,
                                    color=color, marker=marker, masks_keys=masks_keys)
        return fn

    return decorate


def get_method(name: str) -> MethodSpec:
    """The registered method ``name``; ``ValueError`` listing the known names otherwise."""
    if not isinstance(name, str):
        raise TypeError(f"method must be a string, got {type(name).__name__}")
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; expected one of: {', '.join(_METHODS)}")
    return _METHODS[name]


def unregister_method(name: str) -> None:
    """Remove a registered method (tests and notebooks that register temporary ones)."""
    get_method(name)
    del _METHODS[name]


def list_methods() -> list[MethodSpec]:
    """All registered methods in registration order."""
    return list(_METHODS.values())


def budget_params(method: str, budget: int) -> dict[str, Any]:
    """``{spec.budget_param: budget}`` for a fixed-budget method, ``{}`` for the others."""
    spec = get_method(method)
    return {spec.budget_param: budget} if spec.budget_param else {}


def select(q: Tensor, k: Tensor, method: str, *, causal: bool = True, key_mask: Tensor | None = None,
           **params: Any) -> Selection:
    """Run the selection method ``method`` on ``q [B, H, N_q, D]``, ``k [B, H_kv, N_k, D]``.

    ``key_mask [B, N_k]`` (True / 1 = a real key, False / 0 = padding; see :mod:`.key_mask`):
    padded keys are never selected. Methods that declare ``masks_keys`` (the top-k scorers) take
    it themselves, so each row keeps its best ``K`` real keys; for the others the padded keys are
    dropped from the rows they selected.
    """
    from ..ops.validation import check_qkv
    from .key_mask import check_key_mask, drop_masked_keys

    spec = get_method(method)
    spec.check_params(params)
    check_qkv(q, k, k)
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    key_mask = check_key_mask(key_mask, q.shape[0], k.shape[2], q.device)
    kwargs = {**spec.defaults(), **params}
    if key_mask is None or bool(key_mask.all()):
        return spec.select(q, k, causal=causal, **kwargs)
    if spec.masks_keys:
        return spec.select(q, k, causal=causal, key_mask=key_mask, **kwargs)
    selection = spec.select(q, k, causal=causal, **kwargs)
    return Selection(drop_masked_keys(selection.indices, key_mask), selection.n_keys, selection.causal,
                     selection.method, {**selection.info, "key_mask": "padded keys dropped from the rows"})

"""One dispatch rule for every op.

An op (:class:`Op`: sparse attention, scored top-k, the indexer KL, k-means, row compaction) has
several implementations (:class:`Implementation`: its pure-PyTorch ``reference``, a ``cpu`` C++
kernel, a ``triton`` kernel). Each declares what it can run through ``supports(*inputs)``, which
returns ``None`` or the reason it cannot, and ``unavailable()``, which says why it cannot run on
this machine at all (an extension that failed to build, a package that is not installed).

* ``"auto"`` walks the implementations by descending priority and takes the first that fits.
* Naming one that cannot run the inputs raises ``ValueError`` with its reason.
* When nothing fits, the error lists every implementation's reason.
* A **documented fallback** (an implementation that fits the inputs but is unavailable here, or
  one whose ``supports`` returns a :class:`Fallback` reason, e.g. float16 on the CPU kernel) warns
  once per process and is recorded; :func:`dispatch_record` returns what ran and every fallback
  taken, for result files. Nothing else picks an implementation anywhere in the package.
"""

from __future__ import annotations

import warnings
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Optional


class Fallback(str):
    """A reason from ``supports`` that makes ``auto``'s next choice a documented fallback: the
    implementation would be the right one for these inputs, but cannot take them (warned once)."""


def _available() -> Optional[str]:
    return None


@dataclass(frozen=True)
class Implementation:
    """One implementation of an op and the inputs it can handle.

    Attributes:
        name: identifier passed as the op's ``implementation=`` (``backend=`` for attention).
        priority: higher is tried first under ``"auto"``.
        run: the function itself, called with the op's inputs.
        supports: ``supports(*inputs, **options) -> None | reason`` (a :class:`Fallback` reason
            marks a documented fallback).
        description: one line for ``sparse-attention backends`` and the docs.
        unavailable: ``unavailable() -> None | reason`` it cannot run here at all.
        checks_index_range: attention only: the kernel itself raises ValueError for an index outside
            ``[-1, N_k - 1]`` (so the op skips its own pass over the indices).
    """

    name: str
    priority: int
    run: Callable[..., Any]
    supports: Callable[..., Optional[str]]
    description: str
    unavailable: Callable[[], Optional[str]] = field(default=_available)
    checks_index_range: bool = False

    def status(self) -> str:
        """``available`` or ``unavailable: <reason>``."""
        reason = self.unavailable()
        return "available" if reason is None else f"unavailable: {reason}"


#: (op, implementation) -> calls chosen in this process.
_USED: Counter = Counter()
#: (op, skipped implementation, taken implementation, reason) -> times this fallback was taken.
_FALLBACKS: Counter = Counter()
_SAID: set[str] = set()
#: op -> implementation that ``"auto"`` takes while :func:`forced` is active.
_FORCED: dict[str, str] = {}
#: Every op by name, in the order they were created.
_OPS: dict[str, "Op"] = {}


class Op:
    """An op's implementations and its dispatch.

    Args:
        name: the op's name (``attention``, ``topk``, ``indexer_kl``, ``kmeans``, ``compact``).
        option: the keyword users choose an implementation with (for error messages).
    """

    def __init__(self, name: str, option: str = "implementation"):
        self.name, self.option = name, option
        self._implementations: dict[str, Implementation] = {}
        _OPS[name] = self

    def register(self, implementation: Implementation) -> Implementation:
        """Add (or replace) an implementation."""
        self._implementations[implementation.name] = implementation
        return implementation

    def implementations(self) -> list[Implementation]:
        """Every implementation, highest priority first."""
        return sorted(self._implementations.values(), key=lambda impl: -impl.priority)

    def names(self) -> tuple[str, ...]:
        return ("auto", *(impl.name for impl in self.implementations()))

    def check_name(self, name: str) -> None:
        """TypeError/ValueError unless ``name`` is ``auto`` or a registered implementation."""
        if not isinstance(name, str):
            raise TypeError(f"{self.option} must be a string, got {type(name).__name__}")
        if name != "auto" and name not in self._implementations:
            raise ValueError(f"unknown {self.option} {name!r} for {self.name}; expected one of: {', '.join(self.names())}")

    def choose(self, name: str, *inputs: Any, **options: Any) -> Implementation:
        """The implementation to run on ``inputs``: ``name`` itself, or the best fit when ``"auto"``.

        Raises:
            ValueError: ``name`` is unknown or cannot run the inputs (with its reason), or under
                ``"auto"`` nothing can (with every implementation's reason).
        """
        self.check_name(name)
        if name == "auto" and self.name in _FORCED:
            name = _FORCED[self.name]
        if name != "auto":
            chosen = self._implementations[name]
            reason = chosen.supports(*inputs, **options) or chosen.unavailable()
            if reason is not None:
                raise ValueError(f"{self.option}={name!r} cannot run these inputs: {reason}")
            _USED[(self.name, chosen.name)] += 1
            return chosen
        reasons, fallbacks = [], []
        for candidate in self.implementations():
            reason = candidate.supports(*inputs, **options)
            if reason is None and candidate.unavailable() is not None:
                reason = Fallback(candidate.unavailable())
            if reason is None:
                for skipped, why in fallbacks:
                    self._fallback(skipped, candidate.name, why)
                _USED[(self.name, candidate.name)] += 1
                return candidate
            if isinstance(reason, Fallback):
                fallbacks.append((candidate.name, str(reason)))
            reasons.append(f"{candidate.name}: {reason}")
        raise ValueError(f"no implementation of {self.name} supports these inputs:\n  " + "\n  ".join(reasons))

    def _fallback(self, skipped: str, taken: str, reason: str) -> None:
        _FALLBACKS[(self.name, skipped, taken, reason)] += 1
        message = f"sparse-attention: {self.name} runs on {taken!r}, not {skipped!r}: {reason}"
        if message not in _SAID:
            _SAID.add(message)
            warnings.warn(message, RuntimeWarning, stacklevel=4)


def anywhere(*inputs: Any, **options: Any) -> None:
    """``supports`` of an implementation that runs any inputs (a reference)."""
    return None


def reference_and_cpu(name: str, reference: Callable[..., Any], reference_description: str, cpu: Callable[..., Any],
                      cpu_description: str, cpu_supports: Callable[..., Optional[str]],
                      cpu_unavailable: Callable[[], Optional[str]] = _available) -> Op:
    """An op with a ``reference`` (priority 0, runs anywhere) and a ``cpu`` implementation (priority 10)."""
    op = Op(name)
    op.register(Implementation(name="reference", priority=0, run=reference, supports=anywhere,
                               description=reference_description))
    op.register(Implementation(name="cpu", priority=10, run=cpu, supports=cpu_supports, unavailable=cpu_unavailable,
                               description=cpu_description))
    return op


@contextmanager
def forced(**implementations: str):
    """Within the block, ``"auto"`` takes the named implementation of each op given, e.g.
    ``forced(kmeans_seed="reference", cluster_rows="reference")`` runs a whole selection on the
    references (to compare it with the fast path). An explicit choice is left as it is.

    Raises:
        ValueError: an unknown op or implementation.
    """
    for op, name in implementations.items():
        if op not in _OPS:
            raise ValueError(f"unknown op {op!r}; expected one of: {', '.join(_OPS)}")
        _OPS[op].check_name(name)
    saved = dict(_FORCED)
    _FORCED.update(implementations)
    try:
        yield
    finally:
        _FORCED.clear()
        _FORCED.update(saved)


def all_ops() -> list[Op]:
    """Every op (each room registers its own when :mod:`sparse_attention.ops` is imported)."""
    return list(_OPS.values())


def dispatch_record() -> dict:
    """What ran in this process, for result files: ``{"used": {op: {implementation: calls}},
    "fallbacks": [{"op", "skipped", "taken", "reason", "calls"}]}``."""
    used: dict[str, dict[str, int]] = {}
    for (op, name), calls in sorted(_USED.items()):
        used.setdefault(op, {})[name] = calls
    fallbacks = [{"op": op, "skipped": skipped, "taken": taken, "reason": reason, "calls": calls}
                 for (op, skipped, taken, reason), calls in sorted(_FALLBACKS.items())]
    return {"used": used, "fallbacks": fallbacks}


def reset_dispatch_record() -> None:
    """Forget what ran (a benchmark records one measurement at a time; tests)."""
    _USED.clear()
    _FALLBACKS.clear()

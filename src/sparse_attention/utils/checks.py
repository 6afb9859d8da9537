"""The package's argument checks for integers and numbers: one rule, one message format.

``check_int`` accepts any integer type (Python ``int``, NumPy integers: ``numbers.Integral``)
but never ``bool``; it raises ``TypeError`` for a value of another type and ``ValueError`` for
an integer below ``minimum``. Messages name the argument, e.g. ``top_k must be an int >= 1,
got 0``; config fields pass their dotted path (``model.d_model``).
"""

from __future__ import annotations

import numbers
from typing import Any


def check_int(name: str, value: Any, minimum: int = 1, *, allow_none: bool = False) -> int | None:
    """``value`` as an ``int`` (or None where allowed) after checking it is an integer >= ``minimum``."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return int(value)


def check_config_int(owner: str, name: str, value: Any, *, allow_zero: bool = False) -> None:
    """:func:`check_int` for the config field ``owner.name`` (``> 0``, or ``>= 0`` with ``allow_zero``)."""
    check_int(f"{owner}.{name}", value, 0 if allow_zero else 1)


def check_number(owner: str, name: str, value: Any, *, allow_zero: bool = False) -> None:
    """``ValueError`` unless the config field ``owner.name`` is a real number ``> 0`` (``>= 0`` with
    ``allow_zero``); bools are not numbers here."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{owner}.{name} must be a number {bound}, got {value!r}")

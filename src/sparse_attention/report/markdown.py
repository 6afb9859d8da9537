"""Markdown table helpers."""

from __future__ import annotations

from typing import Any, Sequence


def fmt(value: Any, digits: int = 3) -> str:
    """Format a table cell: floats to ``digits`` decimals, None as a dash."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 3) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c, digits) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def pivot(rows: list[dict], row_key: str, col_key: str, value_key: str) -> tuple[list, list, dict]:
    """``(row values, column values, {(row, col): value})`` from flat result rows, in first-seen order."""
    row_values = list(dict.fromkeys(r[row_key] for r in rows))
    col_values = list(dict.fromkeys(r[col_key] for r in rows))
    cells = {(r[row_key], r[col_key]): r[value_key] for r in rows}
    return row_values, col_values, cells

"""``sparse-attention experiment dsa | visualize | ablation | profile``: parsing and output only."""

from __future__ import annotations


def add_parsers(sub) -> None:
    """Registered by the analysis commands (placeholder until they land)."""

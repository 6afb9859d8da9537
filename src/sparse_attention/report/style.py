"""Shared plot style: one colour and marker per method (from its spec), consistent across every figure."""

from __future__ import annotations

from pathlib import Path

from ..selection.base import MethodSpec, list_methods
from ..utils.results_io import atomic_write


def style(method: str) -> dict:
    """Matplotlib keyword arguments for ``method``: its spec's colour, marker and label (a method
    this process has not registered, read from a results file, gets the spec defaults)."""
    spec = next((s for s in list_methods() if s.name == method), None)
    if spec is None:
        defaults = MethodSpec.__dataclass_fields__
        return {"color": defaults["color"].default, "marker": defaults["marker"].default, "label": method}
    return {"color": spec.color, "marker": spec.marker, "label": spec.label}


def save(fig, out_dir, name: str) -> str:
    """Save ``fig`` as ``name`` in ``out_dir`` (atomically: never a half-written image) and close
    it; returns the file name."""
    import io

    if not fig.get_layout_engine():
        fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=120, format=Path(name).suffix.lstrip(".") or "png")
    atomic_write(Path(out_dir) / name, buffer.getvalue())
    import matplotlib.pyplot as plt

    plt.close(fig)
    return name

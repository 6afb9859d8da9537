"""Shared plot style: one colour and marker per method (from its spec), consistent across every figure."""

from __future__ import annotations

from ..selection.base import MethodSpec, list_methods


def style(method: str) -> dict:
    """Matplotlib keyword arguments for ``method``: its spec's colour, marker and label (a method
    this process has not registered, read from a results file, gets the spec defaults)."""
    spec = next((s for s in list_methods() if s.name == method), None)
    if spec is None:
        defaults = MethodSpec.__dataclass_fields__
        return {"color": defaults["color"].default, "marker": defaults["marker"].default, "label": method}
    return {"color": spec.color, "marker": spec.marker, "label": spec.label}


def save(fig, out_dir, name: str) -> str:
    """Save ``fig`` as ``name`` in ``out_dir`` and close it; returns the file name."""
    if not fig.get_layout_engine():
        fig.tight_layout()
    fig.savefig(out_dir / name, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return name

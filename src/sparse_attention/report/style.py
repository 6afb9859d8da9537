"""Shared plot style: one colour and marker per method, consistent across every figure."""

from __future__ import annotations

METHOD_STYLE = {
    "dense": ("black", "o"),
    "local": ("tab:gray", "s"),
    "topk": ("tab:green", "^"),
    "dsa": ("tab:red", "D"),
    "ssa": ("tab:blue", "o"),
    "routing": ("tab:purple", "v"),
    "lsh": ("tab:orange", "P"),
}


def style(method: str) -> dict:
    """Matplotlib keyword arguments for ``method``."""
    color, marker = METHOD_STYLE.get(method, ("tab:brown", "x"))
    return {"color": color, "marker": marker, "label": method}


def save(fig, out_dir, name: str) -> str:
    """Save ``fig`` as ``name`` in ``out_dir`` and close it; returns the file name."""
    if not fig.get_layout_engine():
        fig.tight_layout()
    fig.savefig(out_dir / name, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return name

"""Report and plots generated from ``results.json`` alone (never recomputed).

Each experiment has a module here with ``tables(section, results) -> str`` (Markdown) and
``plots(section, out_dir) -> list[str]`` (file names written).
"""

from .build import SECTIONS, render_report, write_plots

__all__ = ["SECTIONS", "render_report", "write_plots"]

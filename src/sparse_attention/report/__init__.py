"""Report and plots generated from ``results.json`` alone (never recomputed).

Each experiment has a module here with ``tables(section, results) -> str`` (Markdown) and
``plots(section, out_dir) -> list[str]`` (file names written).
"""

from .build import render_report, sections, write_plots

__all__ = ["render_report", "sections", "write_plots"]

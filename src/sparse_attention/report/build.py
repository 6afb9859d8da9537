"""Assemble ``report.md`` and the plots from a results dictionary."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from ..selection.base import list_methods


def _module(name: str):
    """The report module of experiment ``name`` (``report/<name>.py``: ``tables`` and ``plots``)."""
    try:
        return importlib.import_module(f"{__package__}.{name}")
    except ModuleNotFoundError as err:
        if err.name != f"{__package__}.{name}":
            raise
        raise ValueError(f"results.json has an experiment {name!r} without a report section:"
                         f" add report/{name}.py with tables() and plots()") from None


def sections(results: dict[str, Any]):
    """``(name, section, report module)`` for every experiment in ``results``, in the order the
    suite ran them (the suite's list is the one list of experiments; the report has none)."""
    for name, section in results.get("experiments", {}).items():
        yield name, section, _module(name)


def _budget_methods(cfg: dict[str, Any]) -> list[str]:
    """The run's fixed-budget methods (a ``budget_param`` in their spec), which got ``budget`` keys."""
    known = {spec.name: spec for spec in list_methods()}
    return [m for m in cfg.get("methods", ()) if m in known and known[m].budget_param]


def machine_line(results: dict[str, Any]) -> str:
    m = results.get("machine", {})
    line = (f"{m.get('device_name', '?')} ({m.get('device', '?')}), {m.get('threads', '?')} threads, "
            f"torch {m.get('torch', '?')}, python {m.get('python', '?')}, git {str(m.get('git_sha', '?'))[:12]}")
    kernel = m.get("cpu_kernel")
    if kernel:  # the CPU kernel's build and any ISA caps on PyTorch's own kernels
        features = ", ".join(kernel.get("compiled_features", [])) or "not loaded"
        line += (f"; CPU kernel built for `{kernel.get('isa_level', '?')}` ({features}), CPU has"
                 f" {', '.join(kernel.get('cpu_flags', [])) or '?'}, dense on {kernel.get('torch_cpu_capability', '?')}")
        if kernel.get("isa_caps"):
            line += " (" + ", ".join(f"{k}={v}" for k, v in kernel["isa_caps"].items()) + ")"
    return line


def render_report(results: dict[str, Any], plot_files: dict[str, list[str]] | None = None) -> str:
    """Markdown report of every section present in ``results``."""
    cfg = results.get("config", {})
    runtime = results.get("runtime_s", {})
    lines = [
        "# Attention-level experiments",
        "",
        f"Generated from `results.json` by `sparse-attention report`. Mode: {'quick' if cfg.get('quick') else 'full'};"
        f" lengths {cfg.get('lengths')}; heads {cfg.get('heads')}:{cfg.get('kv_heads')}, D={cfg.get('head_dim')};"
        + (f" scalability head layouts {', '.join(cfg['head_layouts'])};" if cfg.get("head_layouts") else "") +
        f" budget {cfg.get('budget')} keys for {'/'.join(_budget_methods(cfg)) or 'no method'}; seed {cfg.get('seed')}.",
        f"Machine: {machine_line(results)}.",
        f"Runtime: {runtime.get('total', 0):.0f} s in all.",
        "",
    ]
    for name, section, module in sections(results):
        lines.append(module.tables(section, results).rstrip())
        for file in (plot_files or {}).get(name, []):
            lines.append(f"\n![{name}]({file})")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def write_plots(results: dict[str, Any], out_dir: str | Path) -> dict[str, list[str]]:
    """Write every section's plots into ``out_dir``; returns section -> file names."""
    import matplotlib

    matplotlib.use("Agg")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, section, module in sections(results):
        written[name] = module.plots(section, out)
    return written

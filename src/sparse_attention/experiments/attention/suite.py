"""The attention-level experiment suite: runs experiments, writes results, report and plots.

Each experiment is a module with ``run(ctx) -> dict`` (its section of ``results.json``).
Results are written atomically after every experiment, so an interrupted run keeps what
finished and ``resume=True`` skips sections already computed with the same configuration.
"""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from ...ops.record import dispatch_record, machine_with_kernel
from ...utils.results_io import read_json, write_json
from .context import RunContext, SuiteConfig

#: The one list of experiments: name -> module ``experiments/attention/<name>.py`` with its report section
#: ``report/<name>.py``, in run and report order.
EXPERIMENTS = ("needle", "sparsity", "quality", "scalability", "spectral", "energy", "ablation", "pareto")

RESULTS_FILE = "results.json"
FORMAT_VERSION = 1


def _module(name: str):
    return importlib.import_module(f"{__package__}.{name}")


def _same_setup(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two configs measure the same thing (which experiments run does not matter)."""
    def comparable(config: dict[str, Any]) -> str:  # JSON form: tuples and lists compare equal
        return json.dumps({k: v for k, v in config.items() if k != "experiments"}, sort_keys=True)

    return comparable(a) == comparable(b)


def run_suite(config: SuiteConfig, output_dir: str | Path, *, resume: bool = False,
              progress: Callable[[Iterable, str], Iterable] | None = None,
              log: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    """Run the selected experiments and write ``results.json`` into ``output_dir``.

    Args:
        config: what to run (``config.experiments`` empty = all).
        output_dir: created if missing.
        resume: keep sections of an existing ``results.json`` whose config matches.
        progress: wraps inner loops, ``progress(items, description)`` (e.g. tqdm).
        log: receives one line per experiment.
    Returns:
        The results dictionary (also on disk).
    """
    names = config.experiments or EXPERIMENTS
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        raise ValueError(f"experiments: unknown {unknown}; expected some of {list(EXPERIMENTS)}")
    out = Path(output_dir)
    path = out / RESULTS_FILE
    results: dict[str, Any] = {"format_version": FORMAT_VERSION, "config": config.to_dict(),
                               "machine": machine_with_kernel(config.device), "experiments": {}, "runtime_s": {}}
    if resume and path.is_file():
        previous = read_json(path)
        if _same_setup(previous.get("config", {}), results["config"]):
            results["experiments"] = previous.get("experiments", {})
            results["runtime_s"] = previous.get("runtime_s", {})
        else:
            log("resume: the existing results.json has another configuration; starting afresh")
    ctx = RunContext(config, progress=progress or (lambda items, desc: items))
    for name in names:
        if name in results["experiments"]:
            log(f"{name}: kept from the previous run")
            continue
        start = time.perf_counter()
        results["experiments"][name] = _module(name).run(ctx)
        results["runtime_s"][name] = time.perf_counter() - start
        results["dispatch"] = dispatch_record()  # which implementation ran each op, and any fallback
        write_json(path, results)
        log(f"{name}: {results['runtime_s'][name]:.1f} s")
    # Report order is this order (report.sections follows the file), also after a resume.
    results["experiments"] = {n: results["experiments"][n] for n in EXPERIMENTS if n in results["experiments"]}
    results["runtime_s"]["total"] = sum(v for k, v in results["runtime_s"].items() if k != "total")
    write_json(path, results)
    return results

"""One-parameter sweeps of LM runs: one training run per value of one config key.

:func:`run_ablation` trains ``OUT/<leaf>=<value>/`` for every value (skipping runs that have
finished with the same config, continuing runs that have a checkpoint), then writes
``OUT/ablation.json`` (value -> :func:`~sparse_attention.experiments.lm.compare.run_summary` of the
run, plus machine info and the base config) and ``OUT/ablation.png`` (final validation loss,
indexer recall and time per step against the value).

A key is a full config path (``model.indexer_heads``, ``train.main.steps``) or a short name
that ends exactly one path (``indexer_heads``, ``main.steps``); see :func:`resolve_key`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...training.config import RunConfig, apply_overrides
from ...utils.machine import machine_info
from ...utils.results_io import write_json


def config_keys(config: RunConfig | None = None) -> list[str]:
    """Every leaf path of a run config (``model.top_k``, ``train.warmup.lr``, ...)."""
    data = (config or RunConfig()).to_dict()
    keys: list[str] = []

    def walk(node: dict, prefix: str) -> None:
        for name, value in node.items():
            path = f"{prefix}{name}"
            if isinstance(value, dict) and name != "method_params":
                walk(value, path + ".")
            else:
                keys.append(path)

    walk(data, "")
    return keys


def resolve_key(key: str, config: RunConfig | None = None) -> str:
    """The full config path ``key`` names: itself, or the one path that ends with ``.key``.

    ValueError for an empty key, for a key no path ends with (close matches suggested) and for
    an ambiguous key (the candidates listed).
    """
    if not isinstance(key, str) or not key.strip():
        raise ValueError("--vary needs a config key, e.g. model.indexer_heads or indexer_heads")
    key = key.strip()
    keys = config_keys(config)
    if key in keys:
        return key
    matches = [path for path in keys if path.endswith("." + key)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ValueError(f"--vary {key!r} is ambiguous: it could be {', '.join(matches)}; give the full path")
    close = difflib.get_close_matches(key, keys + [path.rsplit(".", 1)[-1] for path in keys], n=5)
    if close:
        raise ValueError(f"--vary {key!r}: no such config key; did you mean {', '.join(dict.fromkeys(close))}?")
    raise ValueError(f"--vary {key!r}: no such config key; the keys are {', '.join(keys)}")


def parse_values(text: str | Sequence[str]) -> list[str]:
    """``"2,4,8"`` (or a list of strings) -> ``["2", "4", "8"]``. ValueError when empty or repeated."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    values = [str(part).strip() for part in parts if str(part).strip()]
    if not values:
        raise ValueError(f"--values needs at least one value, e.g. --values 2,4,8, got {text!r}")
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"--values repeats {', '.join(repeated)}")
    return values


def run_name(path: str, value: str) -> str:
    """Folder of one value: ``indexer_heads=4`` (characters outside ``[\\w.=+-]`` become ``_``)."""
    return re.sub(r"[^\w.=+-]", "_", f"{path.rsplit('.', 1)[-1]}={value}")


def ablation_configs(config: RunConfig, key: str, values: Sequence[str]) -> tuple[str, dict[str, RunConfig]]:
    """``(full path, {value: config})``; every value is validated before anything trains."""
    path = resolve_key(key, config)
    configs = {}
    for value in values:
        try:
            configs[value] = apply_overrides(config, [f"{path}={value}"])
        except (ValueError, TypeError) as err:
            raise ValueError(f"--values {value!r} is not a valid {path}: {err}") from err
    return path, configs


def run_ablation(config: RunConfig, key: str, values: Sequence[str] | str, out_dir: str | Path, *,
                 progress: bool = True) -> dict:
    """Train one run per value of ``key`` (module docstring); returns the contents of ``ablation.json``."""
    from tqdm import tqdm

    from ...data.lm import load_data
    from .compare import run_summary, train_or_load

    values = parse_values(values)
    path, configs = ablation_configs(config, key, values)
    out = Path(out_dir)
    datasets: dict[str, Any] = {}

    def data_for(run_config: RunConfig):
        def load():  # one load per distinct data section, sequence length and seed
            ident = json.dumps([dataclasses.asdict(run_config.data), run_config.train.seq_len, run_config.train.seed],
                               sort_keys=True)
            if ident not in datasets:
                datasets[ident] = load_data(run_config.data, run_config.train.seq_len, seed=run_config.train.seed,
                                            progress=progress)
            return datasets[ident]
        return load

    rows, device = {}, "cpu"
    bar = tqdm(values, desc=f"ablation {path}", unit="run", disable=not progress)
    for value in bar:
        run_config = configs[value]
        run_dir = out / run_name(path, value)
        bar.set_postfix(value=value)
        results, trained = train_or_load(run_config, run_dir, skip_finished=True, resume=True,
                                         data=data_for(run_config), progress=progress)
        device = results["machine"]["device"]
        rows[value] = {"run_dir": str(run_dir), "trained_now": trained, **run_summary(results)}
    document = {
        "key": path, "values": values, "attention": config.model.attention, "results": rows,
        "machine": machine_info(device), "base_config": config.to_dict(),
    }
    write_json(out / "ablation.json", document)
    plot_ablation(document, out / "ablation.png")
    return document


def plot_ablation(document: dict, path: str | Path) -> Path:
    """Final val loss, indexer recall and time per step against the value, from an ``ablation.json`` dict."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ...report.style import save, style

    path = Path(path)
    values = document["values"]
    rows = [document["results"][v] for v in values]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    look = style(document.get("attention", "dsa"))
    for ax, key, title, scale in ((axes[0], "val_loss", "final val loss", 1.0),
                                  (axes[1], "recall", "indexer recall (dense mass on the top-k)", 1.0),
                                  (axes[2], "time_per_step_s", "time per step (ms), main stage", 1e3)):
        points = [(i, row[key] * scale) for i, row in enumerate(rows) if isinstance(row.get(key), (int, float))]
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], **look)
            for i, y in points:
                ax.annotate(f"{y:.4g}", (i, y), xytext=(0, 5), textcoords="offset points", ha="center", fontsize=8)
        else:
            ax.text(0.5, 0.5, "not measured\n(no selection in these runs)", ha="center", va="center",
                    transform=ax.transAxes)
        ax.set_xticks(range(len(values)), values)
        ax.set_xlabel(document["key"])
        ax.set_title(title)
        ax.grid(alpha=0.3)
    fig.suptitle(f"ablation of {document['key']} ({document.get('attention')})")
    path.parent.mkdir(parents=True, exist_ok=True)
    save(fig, path.parent, path.name)
    return path

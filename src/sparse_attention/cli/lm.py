"""``sparse-attention lm train``: argument parsing and output only (logic in ``sparse_attention.training``)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_run_arguments(p: argparse.ArgumentParser, *, default_preset: str = "small") -> None:
    """The options every LM command shares: preset, attention, --set, --data."""
    from ..training.config import PRESETS

    p.add_argument("--preset", default=default_preset, choices=list(PRESETS),
                   help=f"model/training preset (default {default_preset}; tiny is for tests)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.main.steps=100 --set model.top_k=256 (repeatable)")
    p.add_argument("--data", help="data source: stdlib (default, offline), a text file or folder, hf:NAME[:CONFIG],"
                                  " mqar or needle")


def build_config(args: argparse.Namespace, attention: str | None = None, changes: dict | None = None):
    """The :class:`RunConfig` the options describe: the preset with ``attention``, then --data, then
    ``changes`` (``{dotted path: value}``, e.g. a command's --quick schedule), then the user's --set."""
    from ..training.config import apply_overrides, preset

    config = preset(args.preset, attention)
    if args.data:
        config = config.with_changes(data={"source": args.data})
    if changes:
        config = config.with_paths(changes)
    return apply_overrides(config, list(args.overrides))


def _cmd_train(args: argparse.Namespace) -> int:
    from ..report.lm.plots import plot_training_curves
    from ..training.trainer import train

    config = build_config(args, args.attention)
    out = Path(args.out or Path("runs") / f"{args.preset}-{config.model.attention}")
    results = train(config, out, resume=args.resume, progress=not args.quiet)
    if results is not None:  # the main process of a finished run: draw from its results
        plot_training_curves(results, out / "training_curves.png")
        final = results["final_eval"]
        print(f"{out}: val loss {final['val_loss']:.4f}, accuracy {final['val_accuracy']:.4f},"
              f" perplexity {final['val_perplexity']:.3f}; training_results.json, training_curves.png,"
              " metrics.jsonl, model.safetensors")
    return 0


def add_parsers(sub) -> None:
    """``lm train`` (its old top-level name ``train`` is registered by :mod:`.main`)."""
    p = sub.add_parser("train", help="train a GLM4-style MoE LM with dense, DSA or any selection attention",
                       description="Train one run. attention=dsa runs the DeepSeek-V3.2 recipe: dense warm-up of the"
                                   " lightning indexer (KL to the dense attention), then sparse training. Under"
                                   " torchrun (python -m torch.distributed.run --nproc_per_node N -m sparse_attention"
                                   " lm train ...) it trains with DDP.")
    add_run_arguments(p)
    p.add_argument("--attention", default=None,
                   help="dense, dsa or any method of `sparse-attention methods` (default: the preset's, dense)")
    p.add_argument("--out", help="run folder (default runs/PRESET-ATTENTION)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar or eval lines")
    p.set_defaults(func=_cmd_train)

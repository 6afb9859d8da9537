"""``sparse-attention lm compare | table | visualize | ablation | profile``: parsing and output only.

The old top-level names (``experiment dsa|table``, ``visualize``, ``ablation``, ``profile``) and
the seed project's (``run_experiment``, ``visualize_attention``, ``ablation_study``,
``profile_efficiency``) still run these commands: :data:`sparse_attention.cli.main.OLD_NAMES`
registers each as the very parser of its ``lm`` command, and ``sparse-attention --help`` lists
them on one line.

The logic lives in :mod:`sparse_attention.experiments.lm.compare`, :mod:`~sparse_attention.experiments.lm.visualize`,
:mod:`~sparse_attention.experiments.lm.sweep` and :mod:`~sparse_attention.experiments.lm.profile`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .lm import add_run_arguments, build_config


def _quick_text() -> str:
    from ..experiments.lm.compare import QUICK_SCHEDULE

    return ", ".join(f"{path}={value}" for path, value in QUICK_SCHEDULE.items())


def _config(args: argparse.Namespace, attention: str | None = None):
    """The run config of the options, with the ``--quick`` settings before the user's ``--set``."""
    from ..experiments.lm.compare import QUICK_SCHEDULE

    if getattr(args, "threads", 0):
        import torch

        if args.threads < 0:
            raise ValueError(f"--threads must be >= 1 (0 = torch's choice), got {args.threads}")
        torch.set_num_threads(args.threads)
    return build_config(args, attention, QUICK_SCHEDULE if getattr(args, "quick", False) else None)


def _cmd_experiment_dsa(args: argparse.Namespace) -> int:
    from ..experiments.lm.compare import format_comparison, run_dsa_experiment

    config = _config(args)
    out = Path(args.out or ("results/dsa-quick" if args.quick else "results/dsa"))
    metrics = run_dsa_experiment(config, out, resume=args.resume, progress=not args.quiet)
    print(format_comparison(metrics))
    print(f"{out}: dense/ and sparse/ (training_results.json, training_curves.png), comparison/"
          " (comparison_metrics.json, performance_comparison.png, attention_*.png, indexer_heads_*.png)")
    return 0


def _cmd_experiment_table(args: argparse.Namespace) -> int:
    from ..report.lm.table import LM_BEGIN, LM_END, lm_tables
    from ..report.readme import update_readme

    text = lm_tables(args.paths)
    print(text)
    if args.readme:
        update_readme(args.readme, text, ".", begin=LM_BEGIN, end=LM_END)
        print(f"updated the LM block of {args.readme}")
    return 0


def _cmd_visualize(args: argparse.Namespace) -> int:
    from ..experiments.lm.visualize import visualize_run

    document = visualize_run(args.run_dir, args.out, layers=args.layers, sample=args.sample, progress=not args.quiet)
    out = Path(args.out) if args.out else Path(args.run_dir) / "visualize"
    for layer in document["layers"]:
        print(f"layer {layer['layer']}: sparsity {layer['sparsity']:.3f}, recall {layer['recall']:.3f},"
              f" coverage {layer['coverage']:.3f}, mean distance {layer['mean_distance']:.1f}")
    print(f"{out}: {', '.join(document['files'])}, attention_statistics.json")
    return 0


def _cmd_ablation(args: argparse.Namespace) -> int:
    from ..experiments.lm.sweep import parse_values, resolve_key, run_ablation

    values = parse_values(args.values)
    config = _config(args, args.attention)
    path = resolve_key(args.vary, config)
    out = Path(args.out or Path("results/ablation") / path)
    document = run_ablation(config, path, values, out, progress=not args.quiet)
    print(f"{'value':>12} {'val loss':>9} {'accuracy':>9} {'recall':>7} {'ms/step':>8}")
    for value in document["values"]:
        row = document["results"][value]
        recall = f"{row['recall']:.3f}" if row.get("recall") is not None else "n/a"
        ms = f"{row['time_per_step_s'] * 1e3:.1f}" if row.get("time_per_step_s") is not None else "n/a"
        print(f"{value:>12} {row['val_loss']:>9.4f} {row['val_accuracy']:>9.4f} {recall:>7} {ms:>8}")
    print(f"{out}: ablation.json, ablation.png, one run folder per value")
    return 0


def _cmd_profile(args: argparse.Namespace) -> int:
    from ..experiments.lm.profile import format_table, profile_lengths, write_profile

    config = _config(args)
    try:  # fail before measuring, not after
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"--json {args.json}: cannot create its folder ({err})") from None
    document = profile_lengths(config, args.seq_lengths, batch_size=args.batch_size, repeats=args.repeats,
                               top_k_fraction=args.top_k_fraction, max_top_k=args.max_top_k,
                               phases=not args.no_phases, ops=args.ops, progress=not args.quiet)
    json_path, png = write_profile(document, args.json)
    print(format_table(document))
    print("ratio = dense / dsa, measured in this run (> 1: dsa faster or smaller); mem = extra peak memory of one"
          " training step")
    if not args.no_phases:
        from ..report.lm.table import phase_table

        print(phase_table(document))
    if args.ops:
        from ..report.lm.table import op_table

        print(op_table(document))
    print(f"wrote {json_path} and {png}")
    return 0


def add_compare(sub) -> None:
    """``lm compare``: dense baseline vs DSA with one config (old name: ``experiment dsa``)."""

    p = sub.add_parser(
        "compare", help="train a dense baseline and a DSA run (warm-up + sparse) with one config, then compare"
                        " them",
        description="Trains OUT/dense and OUT/sparse with the same config, data and batch order, then writes"
                    " OUT/comparison/: comparison_metrics.json, performance_comparison.png and the attention"
                    " visualisations of the sparse run.")
    add_run_arguments(p)
    p.add_argument("--quick", action="store_true",
                   help=f"the preset shortened ({_quick_text()}, before --set): about 1-2 minutes"
                        " on 2 CPU cores with --preset small")
    p.add_argument("--out", help="output folder (default results/dsa, or results/dsa-quick with --quick)")
    p.add_argument("--resume", action="store_true",
                   help="skip a run whose training_results.json exists, continue one that has a checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bars or eval lines")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default 0: torch's choice)")
    p.set_defaults(func=_cmd_experiment_dsa)


def add_table(sub) -> None:
    """``lm table``: Markdown tables from compare and profile JSON (old name: ``experiment table``)."""
    p = sub.add_parser("table", help="Markdown tables from `lm compare` comparisons and `lm profile` JSON"
                                     " (optionally into the README)")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="an `lm compare` output folder (or its comparison_metrics.json) or a profile.json")
    p.add_argument("--readme", help="README whose LM block is replaced by the tables")
    p.set_defaults(func=_cmd_experiment_table)


def add_visualize(sub) -> None:
    p = sub.add_parser("visualize", help="draw a DSA run's indexer scores, top-k selection and sparse attention",
                       description="Loads RUN_DIR's model, runs one validation sequence in sparse mode and writes"
                                   " attention_pattern_layer{L}.png, indexer_heads_layer{L}.png,"
                                   " attention_statistics.png and attention_statistics.json. Needs a dsa run: a"
                                   " dense run has no indexer or selection to draw (error).")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder of `sparse-attention lm train --attention dsa`")
    p.add_argument("--out", help="output folder (default RUN_DIR/visualize)")
    p.add_argument("--layers", help="comma-separated layers to draw, e.g. 0,1 (default all)")
    p.add_argument("--sample", type=int, default=0, help="validation sequence number (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_visualize)


def add_ablation(sub) -> None:
    p = sub.add_parser("ablation", help="train one run per value of one config key and compare them",
                       description="Trains OUT/<key>=<value>/ for every value (finished runs with the same config"
                                   " are skipped, checkpointed ones continued), then writes ablation.json and"
                                   " ablation.png (val loss, indexer recall, time per step against the value).")
    add_run_arguments(p)
    p.add_argument("--vary", required=True, metavar="KEY",
                   help="config key: a full path (model.indexer_heads) or a unique short name (indexer_heads)")
    p.add_argument("--values", required=True, help="comma-separated values, e.g. 2,4,8,16")
    p.add_argument("--attention", default="dsa", help="attention of every run (default dsa)")
    p.add_argument("--quick", action="store_true",
                   help=f"the short schedule of `lm compare --quick` ({_quick_text()})")
    p.add_argument("--out", help="output folder (default results/ablation/KEY)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or eval lines")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default 0: torch's choice)")
    p.set_defaults(func=_cmd_ablation)


def add_profile(sub) -> None:
    p = sub.add_parser("profile", help="time and memory of a dense vs a DSA training step across sequence lengths",
                       description="For each length builds the dense and the DSA model (shared weights equal),"
                                   " times one training step and one forward pass of each, interleaved, and"
                                   " measures their extra peak memory. Writes JSON and profile.png next to it.")
    add_run_arguments(p, default_preset="wide")
    p.add_argument("--seq-lengths", "--seq_lengths", dest="seq_lengths", required=True, help="comma-separated lengths, e.g. 128,256,512,1024")
    p.add_argument("--batch-size", type=int, help="sequences per step (default: the preset's train.batch_size)")
    p.add_argument("--repeats", type=int, default=5, help="timed samples per variant and length (default 5)")
    p.add_argument("--top-k-fraction", type=float,
                   help="DSA keys per query as a fraction of the length, e.g. 0.25 (default: model.top_k)")
    p.add_argument("--max-top-k", type=int,
                   help="with --top-k-fraction: at most this many keys per query, e.g. 1024 (N/8 up to N=8192)")
    p.add_argument("--json", default="results/profile/profile.json",
                   help="output JSON (default results/profile/profile.json; profile.png is written next to it)")
    p.add_argument("--no-phases", action="store_true",
                   help="skip the time split of one attention layer (dense attention vs DSA's indexer projections,"
                        " scoring + top-k, sparse attention and KL, with counted FLOPs)")
    p.add_argument("--ops", action="store_true",
                   help="also profile one training step of each model (torch.profiler) and list the operators whose"
                        " self times differ most (outside attention they should not)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default 0: torch's choice)")
    p.set_defaults(func=_cmd_profile)


#: ``lm`` command -> its parser builder (``train`` is cli.lm.add_parsers).
LM_COMMANDS = {"compare": add_compare, "table": add_table, "visualize": add_visualize, "ablation": add_ablation,
               "profile": add_profile}


def add_lm_commands(lm_sub) -> None:
    """``sparse-attention lm compare | table | visualize | ablation | profile``."""
    for add in LM_COMMANDS.values():
        add(lm_sub)

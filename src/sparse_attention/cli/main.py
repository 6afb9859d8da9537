"""``sparse-attention`` command line: thin commands over the library, no logic of their own."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from tqdm import tqdm

from .._optional import MissingDependency


def _cmd_methods(args: argparse.Namespace) -> int:
    from ..selection import list_methods

    for spec in list_methods():
        print(f"{spec.name}: {spec.summary}")
        print(f"    reference: {spec.reference}")
        for p in spec.params:
            source = f"  [{p.source}]" if p.source else ""
            print(f"    {p.name} = {p.default!r}: {p.doc}{source}")
    return 0


def _cmd_backends(args: argparse.Namespace) -> int:
    from ..ops import backends

    for b in backends():
        print(f"{b.name} (priority {b.priority}, {b.status()}): {b.description}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from ..experiments.attention.demo import DemoConfig, format_table, run_demo

    if args.threads:
        torch.set_num_threads(args.threads)
    config = DemoConfig(length=args.length, heads=args.heads, kv_heads=args.kv_heads, head_dim=args.head_dim,
                        budget=args.budget, seed=args.seed, methods=tuple(args.methods) if args.methods else None)
    from ..selection import list_methods

    unknown = set(config.methods or ()) - {m.name for m in list_methods()}
    if unknown:
        raise ValueError(f"unknown method(s): {', '.join(sorted(unknown))}")
    rows = run_demo(config, progress=lambda specs: tqdm(specs, desc="methods", unit="method", file=sys.stderr))
    print(f"Demo: causal attention on clustered synthetic q/k/v, N={config.length}, heads {config.heads}:"
          f"{config.kv_heads}, D={config.head_dim}, torch {torch.__version__}, {torch.get_num_threads()} threads.")
    print("recall = dense attention mass on the selected keys; cosine / rel. L2 = output vs dense.")
    print(format_table(rows))
    if args.json:
        from ..utils.results_io import write_json

        write_json(args.json, {"config": vars(config), "rows": rows})
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparse-attention",
        description="Sparse attention research toolkit: selection methods, one sparse kernel, measured comparisons.",
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"sparse-attention {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("methods", help="list selection methods with their parameters and defaults")
    p.set_defaults(func=_cmd_methods)

    p = sub.add_parser("backends", help="list sparse attention backends in dispatch order")
    p.set_defaults(func=_cmd_backends)

    p = sub.add_parser("demo", help="compare every method with dense attention on a generated input")
    p.add_argument("--length", type=int, default=1024, help="sequence length N (default 1024)")
    p.add_argument("--heads", type=int, default=8, help="query heads H (default 8)")
    p.add_argument("--kv-heads", type=int, default=2, help="key/value heads H_kv (default 2)")
    p.add_argument("--head-dim", type=int, default=64, help="head dim D (default 64)")
    p.add_argument("--budget", type=int, default=128, help="keys per query for local/topk/dsa (default 128)")
    p.add_argument("--seed", type=int, default=0, help="seed of the input and of randomised methods")
    p.add_argument("--methods", nargs="+", help="subset of methods (default all)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--json", help="also write the rows to this JSON file")
    p.set_defaults(func=_cmd_demo)

    from . import bench, experiments, export, generate, head_approx, hf, lm, lm_analysis

    experiments.add_parsers(sub)
    bench.add_parsers(sub)
    head_approx.add_parsers(sub)
    generate.add_parsers(sub)
    export.add_parsers(sub)
    hf.add_parsers(sub)
    p = sub.add_parser("lm", help="the LM harness: train | compare | visualize | ablation | profile | table",
                       description="Language-model harness: dense vs DeepSeek Sparse Attention training and analysis.")
    lm_sub = p.add_subparsers(dest="lm_command", required=True, metavar="COMMAND")
    lm.add_parsers(lm_sub)
    lm_analysis.add_lm_commands(lm_sub)
    # Old names, kept working: train, experiment dsa|table, visualize, ablation, profile, and the
    # seed project's run_experiment, visualize_attention, ablation_study, profile_efficiency.
    lm.add_parsers(sub, alias_of="train")
    lm_analysis.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError) as err:  # user mistakes: one clear line, no traceback
        parser.exit(2, f"error: {err}\n")
    except MissingDependency as err:  # an optional package this command needs: one line with the pip command
        command = " ".join(filter(None, (args.command, getattr(args, "lm_command", None))))
        parser.exit(1, f"error: {err.for_command(command)}\n")


if __name__ == "__main__":
    sys.exit(main())

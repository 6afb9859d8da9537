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
    from ..ops import all_ops

    for op in all_ops():  # attention first: its backends are what most users choose
        print(f"{op.name} ({op.option}=auto or one of these, highest priority first):")
        for b in op.implementations():
            print(f"  {b.name} (priority {b.priority}, {b.status()}): {b.description}")
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


#: Old command names that still run a command (the first versions' and the seed project's
#: scripts'): old name -> the command it runs. Each is registered as that command's own parser, so
#: it takes the same arguments and gives the same result; ``--help`` names them all on one line.
OLD_NAMES = {
    "experiments": "suite",
    "train": "lm train",
    "experiment dsa": "lm compare",
    "experiment table": "lm table",
    "visualize": "lm visualize",
    "ablation": "lm ablation",
    "profile": "lm profile",
    "run_experiment": "lm compare",
    "visualize_attention": "lm visualize",
    "ablation_study": "lm ablation",
    "profile_efficiency": "lm profile",
}


def old_names_line() -> str:
    """The line of ``--help`` that names every old name with the command it runs."""
    by_command: dict[str, list[str]] = {}
    for old, new in OLD_NAMES.items():
        by_command.setdefault(new, []).append(old)
    return "old names, still accepted: " + "; ".join(f"{', '.join(olds)} -> {new}" for new, olds in by_command.items())


def _add_old_names(groups: dict[tuple[str, ...], argparse._SubParsersAction]) -> None:
    """Register each of :data:`OLD_NAMES` under the parser of its command, with no help line of its own.

    ``groups`` maps a command prefix (``()`` for the top level, ``("lm",)``) to its subparsers;
    an old group such as ``experiment`` is added (hidden) on first use.
    """
    for old, new in OLD_NAMES.items():
        *new_group, new_name = new.split()
        *old_group, old_name = old.split()
        if tuple(old_group) not in groups:
            *outer, group_name = old_group
            olds = ", ".join(f"`{o}` = `{n}`" for o, n in OLD_NAMES.items() if o.split()[:-1] == old_group)
            p = groups[tuple(outer)].add_parser(group_name, description=f"Old names: {olds}.")
            groups[tuple(old_group)] = p.add_subparsers(dest=group_name, required=True)
        # What argparse does for `aliases=`, minus the help line: the old name maps to the same parser.
        groups[tuple(old_group)].choices[old_name] = groups[tuple(new_group)].choices[new_name]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparse-attention",
        description="Sparse attention research toolkit: selection methods, one sparse kernel, measured comparisons.",
        epilog=old_names_line(),
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"sparse-attention {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("methods", help="list selection methods with their parameters and defaults")
    p.set_defaults(func=_cmd_methods)

    p = sub.add_parser("backends", help="list every op's implementations (attention backends first) in dispatch order")
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
    # Usage lists the commands only: the old names below are accepted but not listed as commands.
    sub.metavar = "{" + ",".join(sub.choices) + "}"
    _add_old_names({(): sub, ("lm",): lm_sub})
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

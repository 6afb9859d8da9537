"""``sparse-attention suite`` (old name ``experiments``), ``plot`` and ``report``: argument parsing and output only."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm


def check_device(device: str) -> None:
    """Clear error for a device this machine or package cannot use."""
    import torch

    if device == "npu":
        import importlib.util

        installed = importlib.util.find_spec("mindspore") is not None
        raise ValueError(
            "--device npu: the MindSpore/Ascend backend is not implemented yet (a later issue). "
            + ("MindSpore is installed but unused." if installed else
               "MindSpore is not installed either (pip install mindspore, in its own environment: it needs numpy<2).")
        )
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available to this PyTorch build")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device mps: the MPS backend is not available on this machine")


def add_parsers(sub) -> None:
    from ..experiments.attention.context import all_methods
    from ..experiments.attention.suite import EXPERIMENTS

    p = sub.add_parser("suite", help="run the attention-level experiment suite (results.json, report.md, plots)")
    p.add_argument("--quick", action="store_true", help="small configuration: under 5 minutes on 2 CPU cores")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "mps", "npu"], help="device (default cpu)")
    p.add_argument("--output-dir", help="where to write (default results/quick or results/full)")
    p.add_argument("--methods", nargs="+", default=list(all_methods()),
                   help="methods (default every registered method; dense is always included)")
    p.add_argument("--lengths", nargs="+", type=int, help="sequence lengths (default 512 1024 2048 quick, to 8192 full)")
    p.add_argument("--head-layouts", nargs="+", metavar="H:H_KV",
                   help="head layouts the scalability experiment measures in turn, e.g. 4:2 4:1 (GQA next to MQA);"
                        " default the suite's 4:2")
    p.add_argument("--long", action="store_true",
                   help="long-N mode: the scalability experiment alone at N = 8192 16384 32768 in head layouts"
                        " 4:2 and 4:1 (--lengths, --head-layouts and --only override its parts)")
    p.add_argument("--only", nargs="+", choices=EXPERIMENTS, help="run only these experiments")
    p.add_argument("--budget", type=int, default=256, help="keys per query for local/topk/dsa (default 256)")
    p.add_argument("--seed", type=int, default=0, help="seed of inputs and randomised methods (default 0)")
    p.add_argument("--resume", action="store_true", help="keep finished experiments of an existing results.json")
    p.set_defaults(func=cmd_experiments)

    p = sub.add_parser("plot", help="regenerate every plot (and report.md) from a results.json alone")
    p.add_argument("results", help="path to results.json")
    p.add_argument("--output-dir", help="where to write plots (default: next to results.json)")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("report", help="regenerate report.md (and optionally a README block) from results.json")
    p.add_argument("results", help="path to results.json")
    p.add_argument("--readme", help="README whose experiment block is replaced by the report")
    p.set_defaults(func=cmd_report)


def _render(results: dict, out_dir: Path) -> str:
    from ..report import render_report, write_plots
    from ..utils.results_io import write_text

    files = write_plots(results, out_dir)
    report = render_report(results, files)
    write_text(out_dir / "report.md", report)
    return report


def cmd_experiments(args: argparse.Namespace) -> int:
    from ..experiments.attention.context import (
        FULL_LENGTHS,
        LONG_HEAD_LAYOUTS,
        LONG_LENGTHS,
        QUICK_LENGTHS,
        SuiteConfig,
    )
    from ..experiments.attention.suite import run_suite

    check_device(args.device)
    if args.long and args.quick:
        raise ValueError("--long and --quick: choose one (--long is the scalability experiment at long N)")
    default_lengths = LONG_LENGTHS if args.long else (QUICK_LENGTHS if args.quick else FULL_LENGTHS)
    lengths = tuple(args.lengths) if args.lengths else default_lengths
    layouts = tuple(args.head_layouts) if args.head_layouts else (LONG_HEAD_LAYOUTS if args.long else ())
    only = tuple(args.only) if args.only else (("scalability",) if args.long else ())
    config = SuiteConfig(quick=args.quick, device=args.device, methods=tuple(args.methods), lengths=lengths,
                         seed=args.seed, budget=args.budget, experiments=only, head_layouts=layouts)
    default_dir = "results/long" if args.long else ("results/quick" if args.quick else "results/full")
    out = Path(args.output_dir or default_dir)

    def progress(items, desc):
        return tqdm(list(items), desc=desc, leave=False, file=sys.stderr)

    results = run_suite(config, out, resume=args.resume, progress=progress,
                        log=lambda line: tqdm.write(line, file=sys.stderr))
    _render(results, out)
    total = results.get("runtime_s", {}).get("total", 0.0)
    print(f"wrote {out / 'results.json'}, {out / 'report.md'} and plots in {total:.0f} s")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from ..utils.results_io import read_json

    results = read_json(args.results)
    out = Path(args.output_dir) if args.output_dir else Path(args.results).parent
    _render(results, out)
    print(f"wrote plots and report.md to {out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ..report.readme import update_readme
    from ..utils.results_io import read_json

    results = read_json(args.results)
    out = Path(args.results).parent
    report = _render(results, out)
    if args.readme:
        update_readme(args.readme, report, out)
        print(f"updated the experiment block of {args.readme}")
    print(f"wrote {out / 'report.md'} and plots")
    return 0

"""``sparse-attention head-approx``: argument parsing and output only (logic in ``experiments.head_approx``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm


def add_parsers(sub) -> None:
    from ..experiments.head_approx.study import STEPS

    p = sub.add_parser("head-approx", help="attention heads replaced by top-K selection + a small MLP: the study of"
                                           " the fourth seed (teacher, signals, per-head error, replacement in the LM,"
                                           " FLOP model, runtime)")
    p.add_argument("--quick", action="store_true", help="small configuration: under 3 minutes on 2 CPU cores")
    p.add_argument("--teacher", metavar="RUN_DIR", help="study this dense LM run folder instead of training one")
    p.add_argument("--output-dir", help="where to write (default results/head-approx-quick or results/head-approx)")
    p.add_argument("--only", nargs="+", choices=STEPS, help="run only these steps (earlier results are kept with"
                                                            " --resume)")
    p.add_argument("--resume", action="store_true", help="keep the finished steps of an existing results.json")
    p.add_argument("--report", metavar="RESULTS_JSON", help="only regenerate report.md and the plots from this file")
    p.add_argument("--readme", help="also replace the head-approx block of this Markdown file (docs/head_approx.md)")
    p.set_defaults(func=cmd_head_approx)


def _write_report(results: dict, out: Path, readme: str | None) -> None:
    from ..report.head_approx import BEGIN, END, plots, render
    from ..report.readme import update_readme
    from ..utils.results_io import write_text

    text = render(results, plots(results, out))
    write_text(out / "report.md", text)
    if readme:
        update_readme(readme, text, out, begin=BEGIN, end=END)
        print(f"updated the head-approx block of {readme}")


def cmd_head_approx(args: argparse.Namespace) -> int:
    from ..utils.results_io import read_json

    if args.report:
        path = Path(args.report)
        if not path.exists():
            raise ValueError(f"--report: {path} not found")
        _write_report(read_json(path), path.parent, args.readme)
        print(f"wrote {path.parent / 'report.md'} and plots")
        return 0
    from ..experiments.head_approx.study import STEPS, HeadApproxConfig, Study

    changes = {"teacher": args.teacher, "steps": tuple(args.only) if args.only else STEPS}
    config = HeadApproxConfig(**changes) if args.quick else HeadApproxConfig.full(**changes)
    out = Path(args.output_dir or ("results/head-approx-quick" if args.quick else "results/head-approx"))

    def progress(items, desc):
        return tqdm(list(items), desc=desc, leave=False, file=sys.stderr)

    study = Study(config, out, progress=progress, log=lambda line: tqdm.write(line, file=sys.stderr))
    results = study.run(resume=args.resume)
    _write_report(results, out, args.readme)
    print(f"wrote {out / 'results.json'}, {out / 'report.md'} and plots in {results['runtime_s']['total']:.0f} s")
    return 0

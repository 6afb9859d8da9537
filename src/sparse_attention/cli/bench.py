"""``sparse-attention bench kernels``: argument parsing and output only."""

from __future__ import annotations

import argparse
import sys

from tqdm import tqdm


def _heads(text: str) -> tuple[int, int]:
    try:
        h, h_kv = (int(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--heads expects H:H_kv such as 16:1, got {text!r}") from None
    return h, h_kv


def add_parsers(sub) -> None:
    bench = sub.add_parser("bench", help="benchmarks (JSON with machine info)")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    p = bench_sub.add_parser("kernels", help="sparse attention backends vs dense SDPA: correctness check, then time,"
                                             " memory, GFLOP/s, ideal and measured ratios")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "mps"], help="device (default cpu)")
    p.add_argument("--lengths", nargs="+", type=int, default=[4096], help="sequence lengths N (default 4096)")
    p.add_argument("--top-k", nargs="+", type=int, default=[256], help="keys per query: one value or one per length")
    p.add_argument("--heads", nargs="+", type=_heads, default=[(16, 1)], help="H:H_kv pairs (default 16:1)")
    p.add_argument("--head-dim", type=int, default=64, help="head dim D (default 64)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--selection", default="shared", choices=["shared", "per_kv_head", "per_head"],
                   help="one selection for all heads (DSA), per KV head, or per query head")
    p.add_argument("--backends", nargs="+", default=[], help="backends to measure (default: all registered)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per measurement, best kept (default 3)")
    p.add_argument("--no-backward", action="store_true", help="time the forward pass only")
    p.add_argument("--indexer-heads", type=int, default=0,
                   help="also time DSA end to end: lightning indexer with this many heads + top-k + attention")
    p.add_argument("--indexer-dim", type=int, default=64, help="indexer head dim (default 64)")
    p.add_argument("--peers", nargs="+", default=[],
                   help="also time peer libraries from PyPI at matching settings: all, or names such as"
                        " local-attention,reformer,routing,nsa (optional extra: pip install sparse-attention[peers]),"
                        " flex (torch FlexAttention on a block selection)")
    p.add_argument("--json", help="write the results here")
    p.set_defaults(func=cmd_bench_kernels)

    p = bench_sub.add_parser("table", help="Markdown table from benchmark JSON files (optionally into a README block)")
    p.add_argument("results", nargs="+", help="JSON files written by `bench kernels --json`")
    p.add_argument("--readme", help="README whose bench block is replaced by the table")
    p.set_defaults(func=cmd_bench_table)


def cmd_bench_kernels(args: argparse.Namespace) -> int:
    from ..bench.kernels import KernelBenchConfig, markdown_table, run_kernel_bench
    from ..utils.results_io import write_json
    from .experiments import check_device

    check_device(args.device)
    cfg = KernelBenchConfig(device=args.device, lengths=tuple(args.lengths), top_k=tuple(args.top_k),
                            heads=tuple(args.heads), head_dim=args.head_dim, dtype=args.dtype,
                            selection=args.selection, backends=tuple(args.backends), repeats=args.repeats,
                            backward=not args.no_backward, indexer_heads=args.indexer_heads,
                            indexer_dim=args.indexer_dim, peers=tuple(args.peers))
    results = run_kernel_bench(cfg, progress=lambda items, desc: tqdm(list(items), desc=desc, file=sys.stderr))
    if args.json:
        write_json(args.json, results)
    print(markdown_table(results))
    return 0


def cmd_bench_table(args: argparse.Namespace) -> int:
    from ..bench.kernels import markdown_table
    from ..report.readme import BENCH_BEGIN, BENCH_END, update_readme
    from ..utils.results_io import read_json

    sections = []
    for path in args.results:
        sections.append(f"From `{path}`:\n\n" + markdown_table(read_json(path)))
    text = "\n\n".join(sections)
    if args.readme:
        update_readme(args.readme, text, ".", begin=BENCH_BEGIN, end=BENCH_END)
        print(f"updated the bench block of {args.readme}")
    else:
        print(text)
    return 0

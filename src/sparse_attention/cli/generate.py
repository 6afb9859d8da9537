"""``sparse-attention generate``: text from a trained run, decoded with the KV cache."""

from __future__ import annotations

import argparse
import sys


def add_parsers(sub) -> None:
    p = sub.add_parser("generate", help="generate text from a trained LM run folder (KV cache; DSA also caches"
                                        " its indexer keys)")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder of `sparse-attention lm train`")
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate (default 64)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1: all tokens)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling (default 0)")
    p.add_argument("--no-cache", action="store_true", help="re-run the whole prefix every step (slow; a check)")
    p.set_defaults(func=cmd_generate)


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from ..models.generation import generate
    from ..data.lm import load_data
    from ..training.run_dir import load_model

    model, config = load_model(args.run_dir)
    if config.data.source in ("mqar", "needle"):
        raise ValueError(f"{args.run_dir} was trained on the synthetic task {config.data.source!r}, not on text")
    tokenizer = load_data(config.data, config.train.seq_len, seed=config.train.seed).tokenizer
    ids = tokenizer.encode(args.prompt)
    if not ids:
        raise ValueError("--prompt: the prompt encodes to no token")
    prompt = torch.tensor([ids], dtype=torch.long)
    out = generate(model, prompt, args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                   seed=args.seed, use_cache=not args.no_cache)
    sys.stdout.write(tokenizer.decode(out[0].tolist()) + "\n")
    return 0

"""Decode-step benchmark: one new query against a KV cache of length L, dense against DSA.

Attention level, batch 1, one new token: dense is SDPA of the new query's ``H`` heads over all
``L`` cached keys and values; DSA scores the new query's indexer heads against the ``L`` cached
indexer keys, keeps the top ``K`` (the fused scorer) and runs the sparse kernel over those keys.
Both are timed interleaved in one run (median of ``repeats``), so their ratio is fair. The
projections of the new token are the same on both sides and left out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..ops.dense import dense_attention
from ..ops.record import dispatch_record, machine_with_kernel
from ..ops.attention import sparse_attention
from ..selection.dsa import dsa_select
from ..utils.checks import check_int
from ..utils.timing import time_interleaved


@dataclass
class DecodeBenchConfig:
    """Cache lengths and the attention shape (default: MQA 16:1, D = 64, K = 2048, a 4 x 64 indexer)."""

    lengths: tuple[int, ...] = (1024, 2048, 4096, 8192, 16384, 32768)
    heads: int = 16
    kv_heads: int = 1
    head_dim: int = 64
    top_k: int = 2048
    indexer_heads: int = 4
    indexer_dim: int = 64
    repeats: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("heads", "kv_heads", "head_dim", "top_k", "indexer_heads", "indexer_dim", "repeats"):
            check_int(name, getattr(self, name))
        if not self.lengths:
            raise ValueError("lengths must hold at least one cache length")
        for n in self.lengths:
            check_int("lengths", n)
        if self.heads % self.kv_heads:
            raise ValueError(f"heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})")


def run_decode_bench(cfg: DecodeBenchConfig, progress=lambda items, desc: items) -> dict[str, Any]:
    """Rows ``{cache_length, dense_ms, dsa_ms, speedup}`` with the machine and the config."""
    rows = []
    gen = torch.Generator().manual_seed(cfg.seed)
    with torch.no_grad():
        for length in progress(list(cfg.lengths), "decode"):
            q = torch.randn(1, cfg.heads, 1, cfg.head_dim, generator=gen)
            k, v = (torch.randn(1, cfg.kv_heads, length, cfg.head_dim, generator=gen) for _ in range(2))
            index_q = torch.randn(1, cfg.indexer_heads, 1, cfg.indexer_dim, generator=gen)
            index_k = torch.randn(1, length, cfg.indexer_dim, generator=gen)
            weights = torch.rand(1, 1, cfg.indexer_heads, generator=gen)

            def dsa_step():
                sel = dsa_select(index_q, index_k, weights, top_k=cfg.top_k, causal=True)
                return sparse_attention(q, k, v, sel.indices, causal=True)

            dense, dsa = time_interleaved([lambda: dense_attention(q, k, v, causal=True), dsa_step], "cpu",
                                          repeats=cfg.repeats, warmup=2)
            rows.append({"cache_length": length, "keys_per_step": min(cfg.top_k, length),
                         "dense_ms": dense["median_ms"], "dsa_ms": dsa["median_ms"],
                         "speedup": dense["median_ms"] / dsa["median_ms"]})
    return {"machine": machine_with_kernel("cpu"), "config": asdict(cfg), "rows": rows, "dispatch": dispatch_record(),
            "timer": f"time_interleaved, median of {cfg.repeats} rounds after 2 warm-up rounds",
            "threads": torch.get_num_threads()}


def markdown_table(results: dict[str, Any]) -> str:
    """The results as a Markdown table (speedup = dense step time / DSA step time)."""
    c = results["config"]
    head = (f"Decode step, MQA {c['heads']}:{c['kv_heads']}, D = {c['head_dim']}, DSA top-{c['top_k']} with a"
            f" {c['indexer_heads']}x{c['indexer_dim']} indexer, {results['threads']} threads ({results['timer']}).\n\n"
            "| cache length | DSA keys | dense ms | DSA ms | dense / DSA |\n|---|---|---|---|---|\n")
    return head + "\n".join(f"| {r['cache_length']} | {r['keys_per_step']} | {r['dense_ms']:.3f} | {r['dsa_ms']:.3f} |"
                            f" {r['speedup']:.2f}x |" for r in results["rows"])

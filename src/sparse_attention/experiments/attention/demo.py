"""The demo: every method against dense attention on one generated input, as a table."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch

from ...data.synthetic import clustered_qkv
from ...ops.dense import dense_attention
from ...ops.attention import sparse_attention
from ...selection.base import budget_params, get_method, list_methods, select
from ...selection.stats import selection_stats
from ...utils.timing import time_call
from .metrics import relative_l2, row_cosine


@dataclass
class DemoConfig:
    length: int = 1024
    heads: int = 8
    kv_heads: int = 2
    head_dim: int = 64
    budget: int = 128  # keys per query of the fixed-budget methods (local window, topk and dsa top_k)
    seed: int = 0
    methods: tuple[str, ...] | None = None


def demo_params(method: str, budget: int, seed: int) -> dict[str, Any]:
    """Settings of each method in the demo: fixed-budget methods get ``budget`` keys."""
    params = budget_params(method, budget)
    if "seed" in get_method(method).defaults():
        params = {**params, "seed": seed}
    return params


def run_demo(config: DemoConfig, progress: Callable[[Iterable], Iterable] = iter) -> list[dict[str, Any]]:
    """Compare every method with dense attention on clustered synthetic q/k/v.

    Args:
        config: sizes, budget and seed.
        progress: wraps the iterable of methods (e.g. ``tqdm``) to show progress.
    Returns one row per method with its edges, sparsity, recall of dense attention mass,
    output cosine and relative L2 error against dense, and selection/attention times (ms,
    best of a few runs, measured in the same process as dense SDPA).
    """
    q, k, v = clustered_qkv(1, config.heads, config.kv_heads, config.length, config.head_dim, seed=config.seed)
    specs = [s for s in list_methods() if not config.methods or s.name in config.methods]
    with torch.no_grad():
        reference = dense_attention(q, k, v, causal=True)
        dense_ms = time_call(lambda: dense_attention(q, k, v, causal=True))["min_ms"]
        rows = []
        for spec in progress(specs):
            params = demo_params(spec.name, config.budget, config.seed)
            start = time.perf_counter()
            selection = select(q, k, spec.name, causal=True, **params)
            select_ms = (time.perf_counter() - start) * 1e3
            stats = selection_stats(selection, q, k)
            if spec.name == "dense":
                out, backend, attention_ms = reference, "sdpa", dense_ms
            else:
                out, backend = sparse_attention(q, k, v, selection.indices, return_backend=True)
                attention_ms = time_call(lambda: sparse_attention(q, k, v, selection.indices))["min_ms"]
            rows.append({
                "method": spec.name, "params": {k_: v_ for k_, v_ in params.items() if k_ != "seed"},
                "slots": stats.slots, "edges_per_query": stats.edges_per_query,
                "causal_sparsity": stats.causal_sparsity, "recall": stats.attention_recall,
                "cosine": row_cosine(out, reference), "rel_l2": relative_l2(out, reference),
                "select_ms": select_ms, "attention_ms": attention_ms, "dense_ms": dense_ms, "backend": backend,
            })
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of :func:`run_demo` rows."""
    header = ("| method | params | edges/query | causal sparsity | recall | cosine | rel. L2 "
              "| select ms | attention ms | x dense time | backend |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in rows:
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "-"
        lines.append(
            f"| {r['method']} | {params} | {r['edges_per_query']:.1f} | {r['causal_sparsity']:.3f} "
            f"| {r['recall']:.3f} | {r['cosine']:.4f} | {r['rel_l2']:.4f} | {r['select_ms']:.1f} "
            f"| {r['attention_ms']:.1f} | {r['attention_ms'] / r['dense_ms']:.2f} | {r['backend']} |"
        )
    return "\n".join(lines)

"""Runtime of an attention layer's heads: dense (SDPA) against every approximated variant, one run.

Per (width, length): ``H = width / head_dim`` heads (MHA, batch 1, causal, float32) of random
``q, k, v``; the projections are the same on both sides and left out. Each variant times its
whole path with this package's kernels: the selection (exact top-k by the fused scorer, the
lightning indexer with top-k, or the seed's position MLP with ``torch.topk``), gathering the
selected keys, and either the sparse attention kernel (``softmax``) or one MLP per head (batched
GEMMs; weights random, since only the time matters here). Calls are interleaved with the dense
ones and the median of ``repeats`` is kept, so each ratio is measured in the same run.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from ...layers.indexer import LightningIndexer
from ...ops.dense import dense_attention
from ...utils.timing import time_interleaved
from .approximators import (
    VARIANTS,
    pad_slots,
    dsa_keys,
    gather_rows,
    mlp_features,
    selector_keys,
    softmax_head,
    topk_keys,
)


def _batched_mlp(inputs: int, hidden: int, outputs: int, heads: int, gen: torch.Generator):
    """One ``inputs -> hidden -> outputs`` MLP per head as two batched GEMMs: ``[H, T, in] -> [H, T, out]``."""
    w1 = torch.randn(heads, inputs, hidden, generator=gen) * inputs ** -0.5
    w2 = torch.randn(heads, hidden, outputs, generator=gen) * hidden ** -0.5

    def run(x: Tensor) -> Tensor:
        return torch.nn.functional.gelu(torch.bmm(x, w1)) @ w2

    return run


def variant_call(variant: str, q: Tensor, k: Tensor, v: Tensor, x: Tensor, top_k: int, hidden: int,
                 indexer: LightningIndexer, seed: int = 0) -> Callable[[], Tensor]:
    """A call computing every head's output by ``variant`` from ``q, k, v [H, T, D]`` (``x [1, T, dim]``)."""
    selection, head = VARIANTS[variant]
    h, t, d = q.shape
    gen = torch.Generator().manual_seed(seed)
    if selection == "seed_selector":
        selector = _batched_mlp(d, hidden, t, h, gen)  # [H, T, D] -> [H, T, T] position logits

        def keys() -> Tensor:
            return pad_slots(selector_keys(selector, q, top_k), top_k)
    elif selection == "topk":
        def keys() -> Tensor:
            return pad_slots(topk_keys(q, k, top_k), top_k)
    else:
        def keys() -> Tensor:
            return pad_slots(dsa_keys(indexer, x, top_k), top_k).expand(h, -1, -1)

    if head == "softmax":
        return lambda: softmax_head(q, k, v, keys())
    width = top_k * (d + 2) if head == "mlp" else top_k * d
    net = _batched_mlp(width, hidden, d, h, gen)
    if head == "mlp":
        return lambda: net(mlp_features(q, k, v, keys()).flatten(-2).view(h, t, width))
    return lambda: net(gather_rows(v, keys()).flatten(-2))


def measure(widths: list[int], lengths: list[int], top_k: int, *, head_dim: int, hidden: int, indexer_heads: int,
            indexer_dim: int, repeats: int, variants: tuple[str, ...] = tuple(VARIANTS), seed: int = 0,
            progress=lambda items, desc: items) -> list[dict[str, Any]]:
    """Rows ``{d_model, heads, t, top_k, dense_ms, variants: {name: {ms, ratio}}}``; ratio = variant / dense."""
    rows = []
    grid = [(w, t) for w in widths for t in lengths]
    with torch.no_grad():
        for width, t in progress(grid, "runtime"):
            heads = max(1, width // head_dim)
            gen = torch.Generator().manual_seed(seed + width + t)
            q, k, v = (torch.randn(heads, t, head_dim, generator=gen) for _ in range(3))
            x = torch.randn(1, t, width, generator=gen)
            torch.manual_seed(seed)
            indexer = LightningIndexer(width, indexer_heads, indexer_dim).eval()
            calls = [lambda: dense_attention(q[None], k[None], v[None], causal=True)]
            calls += [variant_call(name, q, k, v, x, top_k, hidden, indexer, seed) for name in variants]
            timings = time_interleaved(calls, "cpu", repeats=repeats)
            dense_ms = timings[0]["median_ms"]
            row = {"d_model": width, "heads": heads, "head_dim": head_dim, "t": t, "top_k": top_k,
                   "dense_ms": dense_ms, "variants": {}}
            for name, timing in zip(variants, timings[1:]):
                row["variants"][name] = {"ms": timing["median_ms"], "ratio": timing["median_ms"] / dense_ms}
            rows.append(row)
    return rows


def measured_crossover(rows: list[dict[str, Any]], variant: str) -> dict[int, int | None]:
    """Per width, the smallest measured length at which ``variant`` ran faster than dense (None: never)."""
    out: dict[int, int | None] = {}
    for width in sorted({r["d_model"] for r in rows}):
        faster = [r["t"] for r in rows if r["d_model"] == width and r["variants"][variant]["ratio"] < 1]
        out[width] = min(faster) if faster else None
    return out

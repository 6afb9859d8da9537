"""Sparsity: how many keys each method lets a query see, and how that grows with N.

For every N and method the selection is made on i.i.d. Gaussian q/k (the seed study's
input; the clustering methods' counts depend on the data), causal and non-causal. Reported:
clusters (for the clustering methods), edges per attention matrix, sparsity against
``N^2`` and against the causal budget, edges per query, and per method the exponent
``a`` of a least-squares fit ``edges/query ~ c * N^a`` over the lengths (the seed study
claims ``a = 0.5`` for SSA).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ...data.synthetic import gaussian_qkv
from ...selection.base import select
from ...selection.stats import selection_stats
from .context import RunContext


def fit_exponent(lengths: list[int], values: list[float]) -> float | None:
    """Least-squares slope of ``log(values)`` against ``log(lengths)``; None if undefined."""
    points = [(math.log(n), math.log(v)) for n, v in zip(lengths, values) if v > 0]
    if len(points) < 2:
        return None
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in points) / sxx


def _clusters(info: dict[str, Any]) -> float | None:
    """Cluster count of a clustering selection: the value, or the mean over causal blocks with a prefix."""
    value = info.get("n_clusters")
    if value is None:
        return None
    if isinstance(value, list):
        used = [v for v in value if v]
        return sum(used) / len(used) if used else None
    return float(value)


def run(ctx: RunContext) -> dict[str, Any]:
    """Sparsity table rows for every (mode, N, method) and fitted exponents per (mode, method)."""
    cfg = ctx.config
    rows = []
    jobs = [(causal, n) for causal in (True, False) for n in cfg.lengths]
    for causal, n in ctx.progress(jobs, "sparsity"):
        q, k, _ = gaussian_qkv(1, cfg.heads, cfg.kv_heads, n, cfg.head_dim, seed=cfg.seed + n)
        q, k = q.to(ctx.device), k.to(ctx.device)
        for method in cfg.methods:
            with torch.no_grad():
                selection = select(q, k, method, causal=causal, **ctx.settings(method))
            stats = selection_stats(selection)
            rows.append({
                "mode": "causal" if causal else "noncausal", "n": n, "method": method,
                "clusters": _clusters(selection.info), "edges": stats.edges, "sparsity": stats.sparsity,
                "causal_sparsity": stats.causal_sparsity, "edges_per_query": stats.edges_per_query,
                "slots": stats.slots,
            })
    exponents = []
    for mode in ("causal", "noncausal"):
        for method in cfg.methods:
            sub = [r for r in rows if r["mode"] == mode and r["method"] == method]
            exponents.append({"mode": mode, "method": method,
                              "exponent": fit_exponent([r["n"] for r in sub], [r["edges_per_query"] for r in sub])})
    return {"rows": rows, "exponents": exponents,
            "settings": {"data": "gaussian_qkv", "methods": {m: ctx.settings(m) for m in cfg.methods}}}

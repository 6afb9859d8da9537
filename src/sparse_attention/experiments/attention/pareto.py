"""Pareto frontier: output quality against cost, over methods and several settings of each.

At one length (1024 quick, 2048 full), causal, on clustered synthetic ``q, k, v``
(``clustered_qkv`` defaults, suite shape), every method runs at the settings of
:func:`pareto_settings` (its suite default among them, flagged ``is_default``):
fixed-budget methods (a ``budget_param`` in their spec) at fractions of ``config.budget``,
the others at the ``sweep`` of their spec (SSA and Routing vary clusters per query, Routing
also its cluster count; LSH varies hash rounds and bucket size) plus their default.

Per setting:

* quality: attention-mass recall (``selection_stats``) and mean row cosine / relative L2
  of the kernel's output against SDPA dense attention;
* measured time: selection and the shared sparse kernel, each with ``time_call`` in this
  process (median of ``repeats`` runs after ``warmup``; quick mode times the single run
  that produces the result), and dense SDPA time measured in the same process, as a ratio;
* counted FLOPs (``selection.costs``): ``attention_flops`` over the selected edges plus
  ``selection_flops`` of the method (its spec's cost model), and the same ratio to dense
  attention; None for a method without a cost model.

Which settings are Pareto-optimal is computed by the report from these rows.

Runtime (2 CPU cores, measured): quick mode (N = 1024, 17 settings, one timed run each)
about 5 s on an idle machine, 15-25 s on a busy one; full mode (N = 2048, 30 settings,
median of 3 runs after a warm-up) about 8 minutes on a busy machine (N = 4096 took 17),
mostly in the Routing/SSA selections and the reference kernel.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ...data.synthetic import clustered_qkv
from ...ops.dense import dense_attention
from ...ops.attention import sparse_attention
from ...selection.base import get_method, select
from ...selection.costs import attention_flops, selection_flops
from ...selection.stats import selection_stats
from ...utils.timing import time_call
from .context import RunContext
from .metrics import relative_l2, row_cosine
from .spectral import analysis_length, clustered_defaults

QUICK_N, FULL_N = 1024, 2048
QUICK_BUDGET_FRACTIONS = (0.125, 0.5, 1.0)
FULL_BUDGET_FRACTIONS = (0.125, 0.25, 0.5, 1.0, 2.0)
DENSE_REPEATS = 3  # SDPA is cheap: always a median of several runs


def pareto_settings(ctx: RunContext) -> list[tuple[str, dict[str, Any]]]:
    """``(method, overrides)`` for every point, overrides applied on top of ``ctx.settings``."""
    cfg = ctx.config
    fractions = QUICK_BUDGET_FRACTIONS if cfg.quick else FULL_BUDGET_FRACTIONS
    budgets = sorted({max(1, int(cfg.budget * f)) for f in fractions} | {cfg.budget})
    points = []
    for method in cfg.methods:
        spec = get_method(method)
        if spec.budget_param:
            grid = [{spec.budget_param: b} for b in budgets]
        else:
            grid = spec.sweep(cfg.quick) if spec.sweep else [{}]
        points += [(method, overrides) for overrides in grid]
    return points


def _timed(fn: Callable[[], Any], ctx: RunContext, repeats: int, warmup: int) -> tuple[Any, dict[str, float]]:
    """``(result of the last call, time_call dict)``."""
    box: list[Any] = []
    timing = time_call(lambda: box.append(fn()), ctx.device, repeats=repeats, warmup=warmup)
    return box[-1], timing


def run(ctx: RunContext) -> dict[str, Any]:
    """Quality (recall, cosine), time and FLOPs of every setting of :func:`pareto_settings`."""
    cfg = ctx.config
    n = analysis_length(cfg, QUICK_N, FULL_N)
    repeats, warmup = (1, 0) if cfg.quick else (3, 1)
    shape = {"batch": 1, "heads": cfg.heads, "kv_heads": cfg.kv_heads, "head_dim": cfg.head_dim}
    rows = []
    with torch.no_grad():
        q, k, v = (t.to(ctx.device) for t in clustered_qkv(1, cfg.heads, cfg.kv_heads, n, cfg.head_dim,
                                                           seed=cfg.seed))
        reference, dense_time = _timed(lambda: dense_attention(q, k, v, causal=True), ctx, DENSE_REPEATS, 1)
        dense_stats = selection_stats(select(q, k, "dense", causal=True))
        dense_flops = attention_flops(dense_stats, **{k_: shape[k_] for k_ in ("batch", "heads", "head_dim")})
        for method, overrides in ctx.progress(pareto_settings(ctx), "pareto"):
            params = {**ctx.settings(method), **overrides}
            if method == "dense":  # dense runs SDPA, no selection step
                selection = select(q, k, "dense", causal=True)
                out, backend = reference, "sdpa"
                select_time, kernel_time = {"median_ms": 0.0}, dense_time
            else:
                selection, select_time = _timed(lambda: select(q, k, method, causal=True, **params), ctx,
                                                repeats, warmup)
                (out, backend), kernel_time = _timed(
                    lambda: sparse_attention(q, k, v, selection.indices, causal=True, return_backend=True), ctx,
                    repeats, warmup)
            stats = selection_stats(selection, q, k)
            defaults = get_method(method).defaults()
            full_params = {**defaults, **params}
            attn_flops = attention_flops(stats, shape["batch"], shape["heads"], shape["head_dim"])
            sel_flops = selection_flops(method, selection, full_params, **shape)  # None: no cost model
            flops = None if sel_flops is None else sel_flops + attn_flops
            total_ms = select_time["median_ms"] + kernel_time["median_ms"]
            rows.append({
                "method": method, "params": {k_: v_ for k_, v_ in params.items() if k_ != "seed"},
                "is_default": {**defaults, **params} == {**defaults, **ctx.settings(method)},
                "n": n, "recall": stats.attention_recall, "cosine": row_cosine(out, reference),
                "rel_l2": relative_l2(out, reference), "edges_per_query": stats.edges_per_query,
                "causal_sparsity": stats.causal_sparsity, "select_ms": select_time["median_ms"],
                "kernel_ms": kernel_time["median_ms"], "total_ms": total_ms,
                "time_ratio": total_ms / dense_time["median_ms"], "selection_flops": sel_flops,
                "attention_flops": attn_flops, "flops": flops,
                "flops_ratio": None if flops is None else flops / dense_flops, "backend": backend,
            })
    return {
        "rows": rows,
        "dense": {"time_ms": dense_time["median_ms"], "flops": dense_flops},
        "settings": {
            "n": n, "causal": True, **shape, "seed": cfg.seed, "budget": cfg.budget,
            "budget_fractions": list(QUICK_BUDGET_FRACTIONS if cfg.quick else FULL_BUDGET_FRACTIONS),
            "timing": {"repeats": repeats, "warmup": warmup, "dense_repeats": DENSE_REPEATS, "statistic": "median",
                       "threads": torch.get_num_threads(), "device": str(ctx.device)},
            "clustered_qkv": clustered_defaults(),
            "flops": "selection.costs: attention_flops + selection_flops (counted, not measured)",
            "quality": "recall = dense attention mass on the selected keys; cosine/rel_l2 = kernel output vs SDPA",
        },
    }

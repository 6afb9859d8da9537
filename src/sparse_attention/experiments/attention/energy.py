"""Energy proxy: counted FLOPs and bytes per method against N, and the joules they imply.

For each N and method, the selection is run on ``gaussian_qkv`` inputs (B=1, the suite's
heads/kv_heads/head_dim, causal) and :mod:`sparse_attention.selection.costs` counts the
FLOPs and bytes of the selection (the cost model of the method's spec) and of the sparse
kernel over the selected edges (dense: SDPA over every causal pair, its statistics in closed
form by ``costs.dense_stats``, so no ``N x N`` index tensor is built). A method whose spec
has no cost model is left out of the rows and listed in ``settings["not_modelled"]``. Nothing is timed: these are counts of a documented model, not
measurements of this machine.

Energy model: ``joules = FLOPs * e_flop + bytes * e_byte`` with the 45 nm figures of
Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014:
a 32-bit float add costs 0.9 pJ and a multiply 3.7 pJ, so a FLOP of a fused multiply-add
(one add, one multiply) costs their mean, 2.3 pJ; a 32-bit DRAM read costs 640 pJ, i.e.
160 pJ per byte. Every byte is charged at the DRAM price: with the no-reuse byte model of
``selection.costs`` this is an upper bound (real kernels hit caches); ``energy_min_j`` charges
only the compulsory traffic (every touched element once), the matching lower bound.

Lengths: the suite's lengths, plus ``2 * max(lengths)`` in quick mode when that is at most
``QUICK_MAX_EXTRA_LENGTH`` (selection statistics are cheap next to the reference kernel, so
the quick sweep reaches 4096). Cost on 2 CPU cores: quick (512-4096) took 4.1 s with no
other job running, 47-78 s while other jobs shared the cores; full (512-8192) an estimated
~15 s idle (the selections at N=8192 took ~8 s in all; topk/dsa scoring grows as N^2).
"""

from __future__ import annotations

from typing import Any

import torch

from ...data.synthetic import gaussian_qkv
from ...selection.base import get_method, select
from ...selection.costs import INDEX_BYTES, dense_stats, method_costs
from ...selection.stats import selection_stats
from .context import RunContext, SuiteConfig

#: Horowitz, ISSCC 2014, Figure 1.1.9 (45 nm, 0.9 V): energies in picojoules.
PJ_FP32_ADD = 0.9
PJ_FP32_MULT = 3.7
PJ_DRAM_READ_32BIT = 640.0
CITATION = ("M. Horowitz, \"Computing's energy problem (and what we can do about it)\", IEEE ISSCC 2014,"
            " pp. 10-14 (45 nm figures)")
DTYPE_BYTES = 4  # float32 inputs, as generated
QUICK_MAX_EXTRA_LENGTH = 4096
#: Row value -> name of its ratio to dense.
RATIOS = {"flops": "flops_ratio", "bytes": "bytes_ratio", "energy_j": "energy_ratio",
          "energy_min_j": "energy_min_ratio"}


def energy_constants() -> dict[str, float]:
    """Joules per FLOP and per byte derived from the cited figures."""
    return {
        "joules_per_flop": (PJ_FP32_ADD + PJ_FP32_MULT) / 2 * 1e-12,  # an FMA is 2 FLOPs: one add, one multiply
        "joules_per_byte": PJ_DRAM_READ_32BIT / 4 * 1e-12,  # 32-bit read = 4 bytes
    }


def energy_lengths(config: SuiteConfig) -> list[int]:
    """The suite's lengths, plus ``2 * max(lengths)`` in quick mode if at most ``QUICK_MAX_EXTRA_LENGTH``."""
    extra = 2 * max(config.lengths)
    add = config.quick and extra <= QUICK_MAX_EXTRA_LENGTH
    return sorted(set(config.lengths) | ({extra} if add else set()))


def cost_row(n: int, method: str, params: dict[str, Any], q, k, *, heads: int, kv_heads: int,
             head_dim: int) -> dict[str, Any]:
    """Counts of one method at one length: ``q [1, H, N, D]``, ``k [1, H_kv, N, D]``."""
    shape = dict(batch=1, heads=heads, kv_heads=kv_heads, head_dim=head_dim)
    if method == "dense":
        selection, stats = None, dense_stats(n, n, causal=True)
    else:
        selection = select(q, k, method, causal=True, **params)
        stats = selection_stats(selection)
    costs = method_costs(method, stats, selection, params, dtype_bytes=DTYPE_BYTES, **shape)
    const = energy_constants()
    e_flop, e_byte = const["joules_per_flop"], const["joules_per_byte"]
    return {
        "n": n, "method": method, "edges_per_query": stats.edges_per_query, "slots": stats.slots, **costs,
        "energy_attention_j": costs["attention_flops"] * e_flop + costs["attention_bytes"] * e_byte,
        "energy_selection_j": costs["selection_flops"] * e_flop + costs["selection_bytes"] * e_byte,
        "energy_j": costs["flops"] * e_flop + costs["bytes"] * e_byte,
        "energy_min_j": costs["flops"] * e_flop + costs["compulsory_bytes"] * e_byte,
    }


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """``*_ratio`` = value / dense's value at the same N, in place."""
    dense = {r["n"]: r for r in rows if r["method"] == "dense"}
    for row in rows:
        ref = dense.get(row["n"])
        for key, name in RATIOS.items():
            row[name] = row[key] / ref[key] if ref and ref[key] else None


def run(ctx: RunContext) -> dict[str, Any]:
    """FLOPs, bytes and the energy estimate per (N, method), with ratios to dense."""
    cfg = ctx.config
    shape = dict(heads=cfg.heads, kv_heads=cfg.kv_heads, head_dim=cfg.head_dim)
    lengths = energy_lengths(cfg)
    rows = []
    modelled = [m for m in cfg.methods if get_method(m).cost is not None]
    with torch.no_grad():
        for n in ctx.progress(lengths, "energy"):
            q, k, _ = (t.to(ctx.device) for t in gaussian_qkv(1, length=n, seed=cfg.seed + n, **shape))
            for method in modelled:
                rows.append(cost_row(n, method, ctx.settings(method), q, k, **shape))
    add_ratios(rows)
    return {
        "rows": rows,
        "settings": {
            "lengths": lengths, "inputs": "gaussian_qkv, B=1, causal", "batch": 1, **shape,
            "dtype_bytes": DTYPE_BYTES, "index_bytes": INDEX_BYTES,
            "pj_fp32_add": PJ_FP32_ADD, "pj_fp32_mult": PJ_FP32_MULT, "pj_dram_read_32bit": PJ_DRAM_READ_32BIT,
            **energy_constants(), "citation": CITATION,
            "energy_model": "joules = FLOPs * joules_per_flop + bytes * joules_per_byte; bytes under the"
                            " no-reuse model (upper bound), energy_min_j with compulsory bytes (lower bound)",
            "cost_model": "sparse_attention.selection.costs",
            "methods": {m: ctx.settings(m) for m in modelled},
            "not_modelled": [m for m in cfg.methods if m not in modelled],
        },
    }

"""SSA ablation: k-means cluster count and clusters per query against quality and sparsity.

SSA (``selection.ssa``) with ``n_clusters`` in :data:`N_CLUSTERS` (``None`` = the seed
study's rule ``max(4, int(sqrt(L)))`` for the ``L`` keys clustered) crossed with
``clusters_per_query`` in :data:`CLUSTERS_PER_QUERY`, at one length (1024 quick, 4096 full,
never more than the suite's longest length), causal, on clustered synthetic ``q, k, v``
(``clustered_qkv`` defaults, suite shape).

Causal SSA fits a k-means on the keys *before* each query block (``block_size`` =
``max(64, ceil(N/16))``) and adds the block itself as a causal local window, so a fixed
``n_clusters`` applies per prefix and is capped at the prefix length; ``mean_clusters`` is
the mean over blocks of the count actually used.

Per grid point: attention-mass recall (``selection_stats``), output cosine and relative L2
error against SDPA dense attention, edges per query, causal sparsity and the widest
selection row (``slots``). The sparse output is the softmax over exactly the selected keys,
computed with ``ops.masked_dense_attention`` (the masked-dense oracle the
sparse kernels are tested against): the same numbers as the kernel, faster at this size,
since the ablation measures quality, not time.

Runtime (2 CPU cores shared with other jobs, measured): about 6 s in quick mode (N = 1024,
20 grid points); full mode (N = 4096) about 140 s.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ...data.synthetic import clustered_qkv
from ...ops.dense import dense_attention, masked_dense_attention
from ...selection.base import Selection, get_method, select
from ...selection.stats import selection_stats
from .context import RunContext
from .metrics import relative_l2, row_cosine
from .spectral import analysis_length, clustered_defaults, single_thread

N_CLUSTERS = (None, 8, 16, 32, 64)
CLUSTERS_PER_QUERY = (1, 2, 3, 5)
QUICK_N, FULL_N = 1024, 4096
DEFAULT_LABEL = "sqrt"  # how the n_clusters=None rule is shown in tables and plots


def selected_output(q: Tensor, k: Tensor, v: Tensor, selection: Selection) -> Tensor:
    """Softmax attention over the selected keys, ``[B, H, N_q, D]``, by the masked-dense oracle
    (chunked over queries). q: ``[B, H, N_q, D]``; k, v: ``[B, H_kv, N_k, D]``."""
    return masked_dense_attention(q, k, v, selection.indices, causal=selection.causal)


def _mean_clusters(info: dict[str, Any]) -> float:
    """Mean cluster count over the causal blocks that have a prefix (``info["n_clusters"]``)."""
    used = [c for c in info["n_clusters"] if c]
    return sum(used) / len(used) if used else 0.0


def run(ctx: RunContext) -> dict[str, Any]:
    """Recall, cosine, relative L2, edges/query and causal sparsity over the SSA grid."""
    cfg = ctx.config
    n = analysis_length(cfg, QUICK_N, FULL_N)
    base = ctx.settings("ssa")
    grid = [(c, p) for c in N_CLUSTERS for p in CLUSTERS_PER_QUERY]
    rows = []
    # Quality only (no timing): single-threaded, so a busy machine cannot slow it by spin-waits.
    with torch.no_grad(), single_thread():
        q, k, v = (t.to(ctx.device) for t in clustered_qkv(1, cfg.heads, cfg.kv_heads, n, cfg.head_dim,
                                                           seed=cfg.seed))
        reference = dense_attention(q, k, v, causal=True)  # [B, H, N, D]
        for n_clusters, per_query in ctx.progress(grid, "ablation"):
            params = {**base, "n_clusters": n_clusters, "clusters_per_query": per_query}
            selection = select(q, k, "ssa", causal=True, **params)
            stats = selection_stats(selection, q, k)
            out = selected_output(q, k, v, selection)
            rows.append({
                "n": n, "n_clusters": n_clusters, "n_clusters_label": DEFAULT_LABEL if n_clusters is None
                else str(n_clusters), "clusters_per_query": per_query,
                "mean_clusters": _mean_clusters(selection.info), "recall": stats.attention_recall,
                "cosine": row_cosine(out, reference), "rel_l2": relative_l2(out, reference),
                "edges_per_query": stats.edges_per_query, "causal_sparsity": stats.causal_sparsity,
                "slots": stats.slots, "block_size": selection.info["block_size"],
            })
    return {
        "rows": rows,
        "settings": {
            "n": n, "n_clusters": list(N_CLUSTERS), "clusters_per_query": list(CLUSTERS_PER_QUERY),
            "default_rule": "n_clusters=None: max(4, int(sqrt(L))) for the L prefix keys of each causal block",
            "seed_default": {name: get_method("ssa").defaults()[name] for name in ("n_clusters", "clusters_per_query")},
            "causal": True, "batch": 1, "heads": cfg.heads, "kv_heads": cfg.kv_heads, "head_dim": cfg.head_dim,
            "seed": cfg.seed, "ssa_params": base,
            "clustered_qkv": clustered_defaults(),
            "output": "softmax over the selected keys (ops.masked_dense_attention) vs SDPA dense",
        },
    }


"""``ssa``: Spectral Sparse Attention of the seed study: k-means over keys, queries read clusters.

Keys (per batch and KV head) are clustered with k-means (k-means++ init, at most ``iters``
Lloyd iterations). Each query attends to every key of its ``clusters_per_query`` nearest
centroids. Causal attention uses the prefix-block scheme of ``_clustered`` so that the
selection is exactly causal.
"""

from __future__ import annotations

import math

from torch import Tensor

from ._clustered import (
    block_generator,
    check_common,
    clustered_select,
    members_from_assignments,
)
from ._kmeans import kmeans
from .base import Param, Selection, register_method
from .costs import clustered_costs, merge_flops

_ASSIGN = ("euclidean", "dot")


def ssa_cost(selection: Selection, params: dict, *, heads: int, kv_heads: int, head_dim: int,
             dtype_bytes: int) -> tuple[float, float]:
    """Per causal block and KV head a k-means of the prefix keys and the routing of the block's
    queries to the centroids (:func:`~sparse_attention.selection.costs.clustered_costs`), plus
    merging each row's candidate lists."""
    flops, read = clustered_costs("ssa", selection, heads, kv_heads, head_dim, dtype_bytes)
    return flops + merge_flops(selection), read / dtype_bytes


def ssa_sweep(quick: bool) -> list[dict]:
    """Pareto settings: clusters per query."""
    return [{"clusters_per_query": c} for c in ((1, 3, 5) if quick else (1, 2, 3, 5))]


@register_method(
    "ssa",
    params=[
        Param("n_clusters", None, "k-means clusters over the L keys being clustered; None = max(4, int(sqrt(L)))"
              " (never more than L)", "seed study (SSA)"),
        Param("clusters_per_query", 3, "nearest clusters each query reads; more than the cluster count means"
              " all clusters (dense over the clustered keys)", "seed study (SSA)"),
        Param("block_size", None, "causal only: queries of key block b read their own block causally plus"
              " clusters fitted on keys [0, b*S); None = max(64, ceil(N_k/16))", "this package (exact causality)"),
        Param("assign", "euclidean", "query-to-centroid rule: 'euclidean' (nearest centroid) or 'dot'"
              " (largest q.c)", "seed study uses Euclidean"),
        Param("iters", 10, "at most this many Lloyd iterations (stops early on convergence)", "seed study"),
        Param("seed", 0, "seed of the k-means++ initialisation", ""),
    ],
    summary="k-means over keys; each query attends the keys of its nearest centroids",
    reference="seed study (Spectral Sparse Attention); cf. Roy et al. 2021 (Routing Transformer)",
    cost=ssa_cost, sweep=ssa_sweep, color="tab:blue", marker="o",
    full_coverage=lambda n: {"clusters_per_query": 10**6},  # more than the clusters: all of them
)
def select_ssa(
    q: Tensor,
    k: Tensor,
    *,
    causal: bool = True,
    n_clusters: int | None = None,
    clusters_per_query: int = 3,
    block_size: int | None = None,
    assign: str = "euclidean",
    iters: int = 10,
    seed: int = 0,
) -> Selection:
    """Cluster the keys with k-means; each query attends the members of its nearest clusters.

    Args:
        q: ``[B, H, N_q, D]``; k: ``[B, H_kv, N_k, D]``. Query head ``h`` uses the clusters
            of KV head ``h // (H // H_kv)``.
        n_clusters: clusters per k-means; None = ``max(4, int(sqrt(L)))`` for ``L`` keys
            clustered (all keys, or the causal prefix); capped at ``L``.
        clusters_per_query: nearest clusters per query; ``>= n_clusters`` selects every
            clustered key, i.e. dense attention.
        block_size: causal block length (see ``_clustered``); ignored when not causal.
        assign: ``"euclidean"`` (smallest ``||q - c||``) or ``"dot"`` (largest ``q . c``).
        iters: Lloyd iterations at most. seed: k-means++ seed.
    Returns:
        Selection with ``indices [B, H, N_q, K]`` (``H_sel = H``). Non-causal: exactly the
        seed study's method. Causal: own block (causally) + clusters of the prefix keys.
        ``info["n_clusters"]`` is the count used (a list per causal block, 0 = no prefix).
    """
    check_common(n_clusters=n_clusters, clusters_per_query=clusters_per_query, block_size=block_size,
                 iters=iters, seed=seed)
    if not isinstance(assign, str) or assign not in _ASSIGN:
        raise ValueError(f"assign must be one of {_ASSIGN}, got {assign!r}")
    h, h_kv = q.shape[1], k.shape[1]
    g = h // h_kv

    def fit(q_ctx: Tensor, k_ctx: Tensor, block: int):
        b, _, p, d = k_ctx.shape
        n_c = min(max(4, math.isqrt(p)) if n_clusters is None else n_clusters, p)
        cent, labels = kmeans(k_ctx.reshape(b * h_kv, p, d), n_c, iters=iters,
                              generator=block_generator(seed, block))  # [B*H_kv, C, D], [B*H_kv, P]
        return cent, members_from_assignments(labels, n_c).reshape(b, h_kv, n_c, -1)  # [B, H_kv, C, M]

    def route(model, q_blk: Tensor):
        cent, members = model
        b, _, s, d = q_blk.shape
        n_c = cent.shape[1]
        cent = cent.reshape(b, h_kv, 1, n_c, d)
        scores = q_blk.float().reshape(b, h_kv, g, s, d) @ cent.transpose(-1, -2)  # [B, H_kv, G, S, C]
        if assign == "euclidean":  # argmin ||q - c||^2 = argmax (q.c - ||c||^2 / 2)
            scores = scores - 0.5 * (cent * cent).sum(-1).unsqueeze(-2)
        return scores, members, {"n_clusters": n_c}

    info = {"clusters_per_query": clusters_per_query, "assign": assign, "iters": iters, "seed": seed}
    return clustered_select(q, k, causal=causal, block_size=block_size, clusters_per_query=clusters_per_query,
                            fit=fit, route=route, method="ssa", info=info)

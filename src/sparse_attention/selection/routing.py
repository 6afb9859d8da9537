"""``routing``: Routing Transformer attention (Roy et al. 2021), balanced spherical clusters.

Queries and keys are unit-normalised into one shared space. Centroids come from spherical
k-means over the union of a KV group's queries (all its ``G`` query heads) and its keys, or
are given (the paper learns them as an EMA-updated parameter). Clusters are balanced: every
centroid takes the ``cluster_size`` keys most similar to it, so clusters may overlap and all
have one size. Each query attends the members of its ``clusters_per_query`` most similar
centroids. Causal attention uses the prefix-block scheme of ``_clustered`` (exactly causal).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..utils.checks import check_int
from ._clustered import (
    block_generator,
    check_common,
    clustered_select,
)
from ._kmeans import kmeans
from .base import Param, Selection, register_method
from .costs import clustered_costs, merge_flops


def _check_centroids(centroids, n_clusters, h_kv: int, d: int) -> None:
    if centroids is None:
        return
    if not isinstance(centroids, Tensor):
        raise TypeError(f"centroids must be a torch.Tensor or None, got {type(centroids).__name__}")
    if not centroids.is_floating_point():
        raise TypeError(f"centroids must be a floating-point tensor, got dtype {centroids.dtype}")
    if centroids.dim() != 3 or centroids.shape[0] != h_kv or centroids.shape[2] != d or centroids.shape[1] == 0:
        raise ValueError(f"centroids must have shape [H_kv={h_kv}, n_clusters, D={d}], got {tuple(centroids.shape)}")
    if n_clusters is not None and n_clusters != centroids.shape[1]:
        raise ValueError(f"n_clusters={n_clusters} does not match centroids with {centroids.shape[1]} clusters")


def routing_cost(selection: Selection, params: dict, *, heads: int, kv_heads: int, head_dim: int,
                 dtype_bytes: int) -> tuple[float, float]:
    """Spherical k-means of keys and context queries per causal block, balanced clusters and the
    routing of queries (:func:`~sparse_attention.selection.costs.clustered_costs`), plus merging
    each row's candidate lists."""
    flops, read = clustered_costs("routing", selection, heads, kv_heads, head_dim, dtype_bytes)
    return flops + merge_flops(selection), read / dtype_bytes


def routing_sweep(quick: bool) -> list[dict]:
    """Pareto settings: clusters per query, and (full mode) a coarser clustering."""
    return ([{"clusters_per_query": c} for c in (1, 2)]
            + ([] if quick else [{"n_clusters": 8}, {"n_clusters": 8, "clusters_per_query": 2}]))


@register_method(
    "routing",
    params=[
        Param("n_clusters", None, "spherical k-means clusters; None = max(2, int(sqrt(L))) for L keys being"
              " clustered", "Roy et al. 2021 (k ~ sqrt(N))"),
        Param("cluster_size", None, "keys per (balanced) cluster: each centroid takes its most similar keys;"
              " None = ceil(L / n_clusters)", "Roy et al. 2021 (balanced top-k routing)"),
        Param("clusters_per_query", 1, "most similar centroids each query reads; more than the cluster count"
              " means all clusters", "Roy et al. 2021 (1)"),
        Param("block_size", None, "causal only: queries of key block b read their own block causally plus"
              " clusters fitted on keys [0, b*S); None = max(64, ceil(N_k/16))", "this package (exact causality)"),
        Param("iters", 10, "at most this many spherical k-means iterations", ""),
        Param("seed", 0, "seed of the k-means++ initialisation", ""),
        Param("centroids", None, "optional [H_kv, n_clusters, D] learned centroids used instead of fitting",
              "Roy et al. 2021 (EMA-updated centroids)"),
    ],
    summary="Routing Transformer: balanced spherical k-means clusters of queries and keys",
    reference="Roy et al. 2021, Efficient Content-Based Sparse Attention with Routing Transformers",
    cost=routing_cost, sweep=routing_sweep, color="tab:purple", marker="v",
    full_coverage=lambda n: {"clusters_per_query": 10**6, "cluster_size": n},
)
def select_routing(
    q: Tensor,
    k: Tensor,
    *,
    causal: bool = True,
    n_clusters: int | None = None,
    cluster_size: int | None = None,
    clusters_per_query: int = 1,
    block_size: int | None = None,
    iters: int = 10,
    seed: int = 0,
    centroids: Tensor | None = None,
) -> Selection:
    """Route queries to balanced clusters of keys in a shared unit-sphere space.

    Args:
        q: ``[B, H, N_q, D]``; k: ``[B, H_kv, N_k, D]``. Query head ``h`` uses the clusters
            of KV head ``h // (H // H_kv)``, fitted on that head's keys and group's queries.
        n_clusters: None = ``max(2, int(sqrt(L)))`` for ``L`` keys clustered (all keys, or
            the causal prefix), capped at the number of points clustered.
        cluster_size: keys per cluster (capped at ``L``); None = ``ceil(L / n_clusters)``.
            ``cluster_size >= N_k`` with ``clusters_per_query >= n_clusters`` is dense.
        clusters_per_query: most similar centroids per query (more than exist = all).
        block_size: causal block length (see ``_clustered``); ignored when not causal.
        centroids: ``[H_kv, n_clusters, D]`` given centroids (normalised here); no fitting.
    Returns:
        Selection with ``indices [B, H, N_q, K]`` (``H_sel = H``), rows deduplicated.
    """
    check_common(n_clusters=n_clusters, clusters_per_query=clusters_per_query, block_size=block_size,
                 iters=iters, seed=seed)
    check_int("cluster_size", cluster_size, allow_none=True)
    h, h_kv, d = q.shape[1], k.shape[1], q.shape[3]
    _check_centroids(centroids, n_clusters, h_kv, d)
    g = h // h_kv
    given = None
    if centroids is not None:
        given = F.normalize(centroids.detach().to(q.device, torch.float32), dim=-1)  # [H_kv, C, D]

    def fit(q_ctx: Tensor, k_ctx: Tensor, block: int):
        b, _, p, _ = k_ctx.shape
        p_q = q_ctx.shape[2]
        k_unit = F.normalize(k_ctx.float(), dim=-1)  # [B, H_kv, P, D]
        if given is not None:
            cent = given.unsqueeze(0).expand(b, -1, -1, -1)  # [B, H_kv, C, D]
        else:
            # One shared space: the group's context queries (all G heads) and its keys.
            q_unit = F.normalize(q_ctx.float(), dim=-1).reshape(b, h_kv, g * p_q, d)
            points = torch.cat([k_unit, q_unit], dim=2).reshape(b * h_kv, p + g * p_q, d)
            n_fit = min(max(2, math.isqrt(p)) if n_clusters is None else n_clusters, points.shape[1])
            cent, _ = kmeans(points, n_fit, iters=iters, generator=block_generator(seed, block), spherical=True)
            cent = cent.reshape(b, h_kv, n_fit, d)
        n_c = cent.shape[2]
        # Balanced clusters: each centroid keeps its `size` most similar keys (may overlap).
        size = min(math.ceil(p / n_c) if cluster_size is None else cluster_size, p)
        members = (cent @ k_unit.transpose(-1, -2)).topk(size, dim=-1).indices  # [B, H_kv, C, size]
        return cent, members

    def route(model, q_blk: Tensor):
        cent, members = model
        b, _, s, _ = q_blk.shape
        scores = q_blk.float().reshape(b, h_kv, g, s, d) @ cent.unsqueeze(2).transpose(-1, -2)  # [B, H_kv, G, S, C]
        return scores, members, {"n_clusters": cent.shape[2], "cluster_size": members.shape[-1]}

    info = {"clusters_per_query": clusters_per_query, "iters": iters, "seed": seed,
            "learned_centroids": centroids is not None}
    return clustered_select(q, k, causal=causal, block_size=block_size, clusters_per_query=clusters_per_query,
                            fit=fit, route=route, method="routing", info=info,
                            route_keys=("n_clusters", "cluster_size"))

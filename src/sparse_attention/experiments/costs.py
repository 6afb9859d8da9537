"""Counted cost model: FLOPs and bytes of a selection method plus the sparse kernel.

The counts follow the algorithms as implemented here (not hardware counters):

* **attention** (any method, dense included): per query head and valid (query, key) edge,
  ``2 D`` FLOPs for ``q . k`` and ``2 D_v`` for the weighted value sum, plus 5 FLOPs of
  softmax (scale, max, exp, sum, divide).
* **attention bytes**: the key and value vectors each edge reads (``2 D`` elements per
  edge and KV head when the selection is shared within a KV group, per query head when it
  is per head) plus reading ``q`` and writing the output once. No cache reuse is modelled,
  for dense as for sparse, so ratios compare access patterns, not a particular kernel.
* **selection**: the scoring work of each method, e.g. ``2 D N_q N_k`` per head for exact
  top-k, ``2 H_I D_I`` per causal pair for the lightning indexer, ``iters x 2 L k D`` for a
  k-means of ``L`` points and ``k`` clusters, ``2 D (buckets/2)`` per token and hash round
  for LSH. Sorting and top-k count one operation per compared element.
"""

from __future__ import annotations

import math
from typing import Any

from ..selection.base import Selection
from ..selection.stats import SelectionStats, causal_budget


def attention_flops(stats: SelectionStats, batch: int, heads: int, head_dim: int, value_dim: int | None = None) -> float:
    """FLOPs of softmax attention over the selected edges (all heads, whole batch)."""
    value_dim = head_dim if value_dim is None else value_dim
    return batch * heads * stats.edges * (2 * head_dim + 2 * value_dim + 5)


def attention_bytes(stats: SelectionStats, selection_heads: int, batch: int, heads: int, kv_heads: int,
                    head_dim: int, dtype_bytes: int = 4) -> float:
    """Bytes the kernel reads and writes under the no-reuse model above."""
    readers = heads if selection_heads == heads and heads != kv_heads else kv_heads
    gathered = batch * readers * stats.edges * 2 * head_dim
    io = batch * heads * stats.n_queries * head_dim * 2
    return float((gathered + io) * dtype_bytes)


def _kmeans_flops(points: int, clusters: int, dim: int, iters: int) -> float:
    init = clusters * points * 3 * dim  # k-means++: distance to each new centre
    lloyd = iters * (2 * points * clusters * dim + points * dim)  # distances + centroid update
    return float(init + lloyd)


def _clustered_fits(info: dict[str, Any], n_k: int, causal: bool) -> list[tuple[int, int]]:
    """``(points fitted, clusters)`` per k-means fit of a clustering selection."""
    n_clusters = info.get("n_clusters")
    if not causal:
        return [(n_k, int(n_clusters))]
    size = int(info["block_size"])
    fits = []
    for block, clusters in enumerate(n_clusters):
        if clusters:
            fits.append((block * size, int(clusters)))
    return fits


def selection_flops(method: str, selection: Selection, params: dict[str, Any], *, batch: int, heads: int,
                    kv_heads: int, head_dim: int) -> float:
    """FLOPs of choosing the keys (zero for dense and local)."""
    n_q, n_k = selection.indices.shape[2], selection.n_keys
    pairs = causal_budget(n_q, n_k) if selection.causal else n_q * n_k
    info = selection.info
    if method in ("dense", "local"):
        return 0.0
    if method == "topk":
        return float(batch * heads * pairs * (2 * head_dim + 1))
    if method == "dsa":
        h_i = info.get("indexer_heads", params.get("n_heads", 4))
        d_i = params.get("head_dim", 64)
        projection = 2 * head_dim * d_i * (h_i * n_q + n_k) if info.get("indexer") == "random projection" else 0
        return float(batch * (pairs * (2 * h_i * d_i + 2 * h_i + 1) + projection))
    if method in ("ssa", "routing"):
        iters = int(info.get("iters", params.get("iters", 10)))
        total = 0.0
        groups = heads // kv_heads
        for points, clusters in _clustered_fits(info, n_k, selection.causal):
            if method == "routing":
                points = points * (1 + groups)  # keys and the group's queries share the space
                total += clusters * points  # balanced top-k per centroid
            total += _kmeans_flops(points, clusters, head_dim, iters)
            total += 2 * groups * n_q * clusters * head_dim / max(1, len(_clustered_fits(info, n_k, selection.causal)))
        return float(batch * kv_heads * total)
    if method == "lsh":
        rounds, buckets = int(info["n_hashes"]), int(info["n_buckets"])
        tokens = heads * n_q + kv_heads * n_k
        hashing = rounds * tokens * 2 * head_dim * max(1, buckets // 2)
        sorting = rounds * kv_heads * n_k * math.log2(max(2, n_k)) + rounds * heads * n_q * math.log2(max(2, n_k))
        return float(batch * (hashing + sorting))
    raise ValueError(f"no cost model for method {method!r}")

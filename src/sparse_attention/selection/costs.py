"""Counted cost model: FLOPs and bytes of a selection method plus the sparse kernel.

The attention counts and the shared counting helpers live here; each method's own selection
count is the ``cost`` function of its spec (``register_method(..., cost=...)``, next to its
selector), which :func:`selection_costs` calls. A method registered without one has no
selection count: :func:`selection_costs` returns None and the suite says so.

Counts follow each algorithm (not hardware counters). Where the reference implementation
does work an efficient one skips, the algorithm's work is counted, the same way for every
method and for dense: pairs a causal mask removes are not counted (dense SDPA skips them
too, while the reference ``topk``/``dsa`` scorers compute then mask them). Notation:
``N_q, N_k`` queries/keys, ``D`` head dim, ``H``/``H_kv``/``G = H / H_kv`` heads, ``P`` the
causally visible (query, key) pairs, ``K`` selection slots per query row.

* **attention FLOPs** (dense included): per query head and valid edge ``2 D`` for ``q . k``,
  ``2 D_v`` for the weighted value sum, ``5`` for softmax (scale, max, exp, sum, divide).
* **attention bytes** (``dtype_bytes`` per element): the key and value vectors of every edge
  (per KV head when the selection is shared within a KV group, per query head when it is per
  head), reading ``q`` and writing the output once, and reading the ``K`` index slots of each
  selection row (``index_bytes`` each; 0 for dense SDPA, which needs no indices). No cache
  reuse is modelled, for dense as for sparse: an upper bound that compares access patterns.
  ``compulsory`` bytes (every element the call touches, once) are the matching lower bound.
* **selection FLOPs**: ``dense``/``local`` 0 (index arithmetic only). ``topk``:
  ``H P (2 D + 1)`` (score and one top-k comparison per pair). ``dsa``: per pair
  ``H_I (2 D_I + 3) + 1`` (dot, ReLU, weight multiply-add per indexer head, top-k), plus the
  random projection of ``q`` and ``k`` when the indexer is untrained. ``ssa``/``routing``:
  per causal block and KV head a k-means of ``L`` points into ``C`` clusters (k-means++
  ``C L (3 D + 2)``; ``iters + 1`` assignments of ``2 L C D + 2 L C``; ``iters`` updates of
  ``L D``; ``iters`` is the cap, so this is an upper bound when Lloyd converges early),
  routing of the block's ``G S`` queries to the centroids (``2 D C + C`` each); ``routing``
  clusters keys and the group's context queries on the unit sphere (normalising ``3 D`` per
  point) and forms balanced clusters (``2 C L_k D + C L_k``); learned centroids skip the fit.
  ``lsh``: per hash round every query head and KV head token is rotated and hashed
  (``2 D b/2 + b`` for ``b`` buckets), keys are sorted (``N_k log2 N_k`` per KV head) and
  each query row binary-searches its bucket (``3 log2 N_k``). Clustering and hashing merge
  candidate lists: ``K log2 K`` per selection row (a lower bound: the lists hold at least
  ``K`` candidates before deduplication).
* **selection bytes**: the operands each step reads under the same no-reuse model (key or
  indexer-key vectors per scored pair, points per k-means pass, tokens per hash round) plus
  writing the index slots.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..ops.validation import causal_offset
from .base import Selection, get_method
from .stats import SelectionStats, causal_budget

#: Bytes of one index slot (int64, as every selector of this package emits).
INDEX_BYTES = 8


def dense_stats(n_q: int, n_k: int, causal: bool = True) -> SelectionStats:
    """The statistics of ``select(q, k, "dense")`` in closed form, without its ``N_q x N_k`` indices."""
    pos = torch.arange(n_q, dtype=torch.float64) + causal_offset(n_q, n_k)  # [N_q] query positions
    if causal:
        count = (pos + 1).clamp(0, n_k)  # keys 0..pos
        distance = count * (count - 1) / 2  # sum over j <= pos of pos - j
    else:
        count = torch.full_like(pos, float(n_k))
        before = (pos + 1).clamp(0, n_k)  # keys at or before pos, then the rest after it
        distance = before * pos - before * (before - 1) / 2 + (n_k * (n_k - 1) - before * (before - 1)) / 2 \
            - (n_k - before) * pos
    edges, full = float(count.sum()), n_q * n_k
    budget = causal_budget(n_q, n_k) if causal else full
    return SelectionStats(
        n_queries=n_q, n_keys=n_k, slots=n_k, edges=edges, edges_per_query=edges / n_q,
        min_edges_per_query=int(count.min()), max_edges_per_query=int(count.max()),
        sparsity=1.0 - edges / full, causal_sparsity=1.0 - edges / budget if budget else 0.0,
        empty_rows=float((count == 0).double().mean()), mean_distance=float(distance.sum()) / max(1.0, edges))


def attention_flops(stats: SelectionStats, batch: int, heads: int, head_dim: int,
                    value_dim: int | None = None) -> float:
    """FLOPs of softmax attention over the selected edges (all heads, whole batch)."""
    value_dim = head_dim if value_dim is None else value_dim
    return float(batch * heads * stats.edges * (2 * head_dim + 2 * value_dim + 5))


def attention_bytes(stats: SelectionStats, selection_heads: int, batch: int, heads: int, kv_heads: int,
                    head_dim: int, dtype_bytes: int = 4, *, value_dim: int | None = None,
                    index_bytes: int = 0) -> float:
    """Bytes the kernel reads and writes under the no-reuse model above.

    ``stats.edges`` is per selection row; ``index_bytes=INDEX_BYTES`` for a sparse kernel that
    reads ``stats.slots`` index slots per row, 0 for dense SDPA.
    """
    value_dim = head_dim if value_dim is None else value_dim
    readers = heads if selection_heads == heads and heads != kv_heads else kv_heads
    gathered = batch * readers * stats.edges * (head_dim + value_dim)
    io = batch * heads * stats.n_queries * (head_dim + value_dim)  # read q, write the output
    indices = batch * selection_heads * stats.n_queries * stats.slots * index_bytes
    return float((gathered + io) * dtype_bytes + indices)


def compulsory_bytes(stats: SelectionStats, selection_heads: int, batch: int, heads: int, kv_heads: int,
                     head_dim: int, dtype_bytes: int = 4, *, value_dim: int | None = None,
                     index_bytes: int = 0) -> float:
    """Lower bound of the kernel's traffic: every touched tensor element once.

    ``q``, the output and the indices once; of ``k`` and ``v`` at most the keys some edge
    reaches (``min(N_k, edges of the KV head)``), each once. Never above :func:`attention_bytes`.
    """
    value_dim = head_dim if value_dim is None else value_dim
    readers = heads if selection_heads == heads and heads != kv_heads else kv_heads
    touched = kv_heads * min(stats.n_keys, stats.edges * readers / kv_heads)  # key rows read at least once
    elements = heads * stats.n_queries * (head_dim + value_dim) + touched * (head_dim + value_dim)
    indices = selection_heads * stats.n_queries * stats.slots * index_bytes
    return float(batch * (elements * dtype_bytes + indices))


def pairs(selection: Selection) -> int:
    """The (query, key) pairs a selector that scores every visible key looks at."""
    n_q, n_k = selection.indices.shape[2], selection.n_keys
    return causal_budget(n_q, n_k) if selection.causal else n_q * n_k


def log2(x: float) -> float:
    return math.log2(max(2.0, x))


def _blocks(selection: Selection) -> list[tuple[int, int, int]]:
    """``(prefix keys L_k, context queries L_q, block queries S)`` per fitted block.

    Mirrors ``selection._clustered.clustered_select``: one entry per block holding queries,
    in the order of the per-block lists of ``info``; non-causal is one block of all keys.
    """
    n_q, n_k = selection.indices.shape[2], selection.n_keys
    if not selection.causal:
        return [(n_k, n_q, n_q)]
    size, off = int(selection.info["block_size"]), causal_offset(n_q, n_k)
    blocks = []
    for start in range(0, n_k, size):
        lo, hi = (min(max(p - off, 0), n_q) for p in (start, start + size))
        if hi > lo:
            blocks.append((start, lo, hi - lo))
    return blocks


def _per_block(info: dict[str, Any], key: str, count: int) -> list[int]:
    value = info.get(key, 0)
    values = [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)] * count
    assert len(values) == count, f"info[{key!r}] has {len(values)} entries for {count} blocks"
    return values


def _kmeans_flops(points: int, clusters: int, dim: int, iters: int, spherical: bool) -> float:
    init = clusters * points * ((2 * dim + 2) if spherical else (3 * dim + 2))  # distance + running min
    assign = (iters + 1) * (2 * points * clusters * dim + 2 * points * clusters)  # matmul + argmax
    update = iters * (points * dim + clusters * dim * (3 if spherical else 1))  # sums + normalise/divide
    return float(init + assign + update + (3 * points * dim if spherical else 0))


def clustered_costs(method: str, selection: Selection, heads: int, kv_heads: int, head_dim: int,
                     dtype_bytes: int) -> tuple[float, float]:
    """``(FLOPs, bytes)`` of one batch element of an ``ssa``/``routing`` selection."""
    info, d, groups = selection.info, head_dim, heads // kv_heads
    blocks = _blocks(selection)
    clusters = _per_block(info, "n_clusters", len(blocks))
    sizes = _per_block(info, "cluster_size", len(blocks)) if method == "routing" else [0] * len(blocks)
    iters = int(info.get("iters", 10))
    fitted = not info.get("learned_centroids", False)
    flops = elements = 0.0
    for (keys, ctx_queries, queries), n_c, size in zip(blocks, clusters, sizes):
        if keys == 0 or n_c == 0:
            continue  # the first block has no prefix: it attends its own block only
        points = keys + (groups * ctx_queries if method == "routing" else 0)
        if fitted:
            flops += _kmeans_flops(points, n_c, d, iters, spherical=method == "routing")
            elements += (n_c + 1 + 2 * iters) * points * d  # k-means++ passes, assignments, updates
        if method == "routing":
            flops += 2 * n_c * keys * d + n_c * keys  # balanced clusters: similarities + top-`size`
            elements += keys * d + n_c * size * (INDEX_BYTES / dtype_bytes)
        flops += groups * queries * (2 * d * n_c + n_c)  # route queries: similarities + top-c
        if method == "ssa" and info.get("assign", "euclidean") == "euclidean":
            flops += n_c * 2 * d + groups * queries * n_c  # centroid norms once, minus ||c||^2/2 per pair
        elements += groups * queries * d + n_c * d  # queries and centroids once per block
    return kv_heads * flops, kv_heads * elements * dtype_bytes


def merge_flops(selection: Selection) -> float:
    """Sorting and deduplicating each merged candidate row: ``K log2 K`` per selection row (a lower
    bound: clustering and hashing lists hold at least ``K`` candidates before deduplication)."""
    h_sel, n_q, slots = selection.indices.shape[1:]
    return float(h_sel * n_q * slots * log2(slots))


def selection_costs(method: str, selection: Selection, params: dict[str, Any], *, batch: int, heads: int,
                    kv_heads: int, head_dim: int, dtype_bytes: int = 4) -> tuple[float, float] | None:
    """``(FLOPs, bytes)`` of choosing the keys, from the method's own ``cost`` function, plus
    writing the index slots; None when the method's spec has no cost model.

    A spec's ``cost(selection, params, *, heads, kv_heads, head_dim, dtype_bytes)`` returns
    ``(FLOPs, elements read)`` of one batch element; ``params`` holds the method's defaults
    under the given values.
    """
    spec = get_method(method)
    if spec.cost is None:
        return None
    full = {**spec.defaults(), **params}
    flops, elements = spec.cost(selection, full, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                                dtype_bytes=dtype_bytes)
    idx = selection.indices
    write = 0 if method == "dense" else idx.shape[1] * idx.shape[2] * idx.shape[3] * INDEX_BYTES
    return float(batch * flops), float(batch * (elements * dtype_bytes + write))


def selection_flops(method: str, selection: Selection, params: dict[str, Any], *, batch: int, heads: int,
                    kv_heads: int, head_dim: int) -> float | None:
    """FLOPs of choosing the keys (zero for dense and local; None without a cost model)."""
    costs = selection_costs(method, selection, params, batch=batch, heads=heads, kv_heads=kv_heads,
                            head_dim=head_dim)
    return None if costs is None else costs[0]


def method_costs(method: str, stats: SelectionStats, selection: Selection | None, params: dict[str, Any], *,
                 batch: int, heads: int, kv_heads: int, head_dim: int, dtype_bytes: int = 4) -> dict[str, float]:
    """Every count of one method: attention and selection FLOPs and bytes, and their totals.

    Args:
        stats: the selection's statistics (``edges`` per selection row).
        selection: the selection; may be None for ``dense`` (SDPA needs none).
    Returns:
        ``attention_flops, selection_flops, flops, attention_bytes, selection_bytes, bytes,
        compulsory_bytes`` (floats); the selection counts and the totals are None when the
        method has no cost model.
    """
    dense = method == "dense"
    h_sel = 1 if dense else selection.indices.shape[1]
    index = 0 if dense else INDEX_BYTES
    shape = dict(batch=batch, heads=heads, kv_heads=kv_heads, head_dim=head_dim)
    attn_flops = attention_flops(stats, batch, heads, head_dim)
    attn_bytes = attention_bytes(stats, h_sel, batch, heads, kv_heads, head_dim, dtype_bytes, index_bytes=index)
    counted = (0.0, 0.0) if dense else selection_costs(method, selection, params, dtype_bytes=dtype_bytes, **shape)
    lower = compulsory_bytes(stats, h_sel, batch, heads, kv_heads, head_dim, dtype_bytes, index_bytes=index)
    if counted is None:
        return {"attention_flops": attn_flops, "selection_flops": None, "flops": None, "attention_bytes": attn_bytes,
                "selection_bytes": None, "bytes": None, "compulsory_bytes": None}
    sel_flops, sel_bytes = counted
    if not dense:  # the selector reads q and k once and writes its indices once, if it reads them at all
        once = (heads * stats.n_queries + kv_heads * stats.n_keys) * head_dim * dtype_bytes
        lower += min(sel_bytes, batch * (once + h_sel * stats.n_queries * stats.slots * INDEX_BYTES))
    return {"attention_flops": attn_flops, "selection_flops": sel_flops, "flops": attn_flops + sel_flops,
            "attention_bytes": attn_bytes, "selection_bytes": sel_bytes, "bytes": attn_bytes + sel_bytes,
            "compulsory_bytes": lower}

"""Block and cluster plumbing shared by the clustering selectors (``ssa``, ``routing``).

A clustering selector only has to say how it clusters a set of *context* keys (a ``fit``
function) and how a query scores the clusters
and which keys each cluster holds (a ``route`` function). This module handles the rest:

* **Non-causal**: one call with all queries and all keys as context (no local part).
* **Causal**: clusters fitted on all keys would let a future key move a centroid and so
  change which past keys a query sees. Keys are therefore cut into blocks of ``S`` keys.
  The queries whose last visible key lies in block ``b`` (keys ``[b*S, (b+1)*S)``) attend
  (i) every key of block ``b`` up to their own position (a causal local block) and
  (ii) the keys their clusters reach among the prefix ``[0, b*S)``, with clusters fitted on
  that prefix only. Nothing a query in block ``b`` sees depends on a key at or after its
  position other than through (i), which is masked causally, so the selection is exactly
  causal. Each block draws from its own generator, so random draws do not depend on what
  later blocks do either.
* **Rows**: each query takes its ``clusters_per_query`` best-scoring clusters; the union of
  their members (plus, causal, its own block up to itself) becomes its sorted index row
  (the ``cluster_rows`` op, :func:`sparse_attention.ops.compact.cluster_rows`: on CPU a bitmap
  pass reads the members directly, so the ``[rows, c x largest cluster]`` candidate list is
  never built).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor

from ..ops.compact import cluster_rows, compact_rows
from ..ops.validation import causal_offset
from ..utils.checks import check_int
from ._util import make_generator, query_key_limit
from .base import Selection

#: ``fit(q_ctx [B, H, P_q, D], k_ctx [B, H_kv, P, D], block) -> model``: cluster the context
#: (``q_ctx``: the queries at positions before the block, all queries when non-causal).
FitFn = Callable[[Tensor, Tensor, int], Any]
#: ``route(model, q_blk [B, H, S, D]) -> (scores [B, H_kv, G, S, C], members [B, H_kv, C, M], info)``:
#: query-to-cluster affinity (larger = closer, query head ``h`` being ``(h // G, h % G)``), key
#: positions of each cluster (``-1`` padding) and a dict of scalars to report.
RouteFn = Callable[[Any, Tensor], tuple[Tensor, Tensor, dict[str, Any]]]


def check_common(*, n_clusters, clusters_per_query, block_size, iters, seed) -> None:
    """Validate the parameters every clustering selector takes (ValueError/TypeError naming it)."""
    check_int("n_clusters", n_clusters, allow_none=True)
    check_int("clusters_per_query", clusters_per_query)
    check_int("block_size", block_size, allow_none=True)
    check_int("iters", iters)
    make_generator(seed)  # type check of seed


def default_block_size(n_k: int) -> int:
    """``max(64, ceil(N_k / 16))``: at most 16 causal blocks, none shorter than 64 keys."""
    return max(64, math.ceil(n_k / 16))


def block_generator(seed: int, block: int) -> torch.Generator:
    """A generator for block ``block`` alone (its draws never depend on other blocks)."""
    return make_generator((seed * 1_000_003 + block) % (1 << 63))


def members_from_assignments(labels: Tensor, n_clusters: int) -> Tensor:
    """Member lists of a partition.

    Args:
        labels: ``[G, L]`` cluster id of each of ``L`` points.
    Returns:
        ``[G, n_clusters, M]`` point positions of each cluster (ascending), ``-1`` padding,
        ``M`` = the largest cluster size.
    """
    g, n = labels.shape
    order = torch.sort(labels, dim=-1, stable=True).indices  # [G, L] points grouped by cluster
    counts = torch.zeros(g, n_clusters, dtype=torch.long, device=labels.device)
    counts.scatter_add_(1, labels, torch.ones_like(labels))  # [G, C]
    starts = counts.cumsum(dim=-1) - counts  # [G, C] first slot of each cluster in `order`
    width = max(1, int(counts.max()))
    slot = torch.arange(width, device=labels.device)
    pos = starts.unsqueeze(-1) + slot  # [G, C, M]
    members = torch.gather(order, 1, pos.clamp(max=n - 1).reshape(g, -1)).reshape(g, n_clusters, width)
    return torch.where(slot < counts.unsqueeze(-1), members, torch.full_like(members, -1))


def cluster_index_rows(scores: Tensor, members: Tensor, clusters_per_query: int, n_keys: int,
                       limit: Tensor | None = None, key_range: tuple[int, int] | None = None) -> Tensor:
    """Sorted index rows of a block of queries: the members of their best clusters (+ a key range).

    Args:
        scores: ``[B, H_kv, G, S, C]`` query-to-centroid affinity (larger = closer).
        members: ``[B, H_kv, C, M]`` key positions per cluster, ``-1`` padding.
        limit: optional ``[S]`` last visible key per query. key_range: keys every row holds.
    Returns:
        ``[B, H, S, K]`` int64 (``H = H_kv * G``), ascending, unique, ``-1`` padded.
    """
    b, h_kv, g, s, n_c = scores.shape
    if s == 0:
        return torch.full((b, h_kv * g, 0, 1), -1, dtype=torch.long, device=scores.device)
    chosen = scores.topk(min(clusters_per_query, n_c), dim=-1).indices  # [B, H_kv, G, S, c]
    rows = cluster_rows(members.reshape(b * h_kv, n_c, -1), chosen.reshape(b * h_kv, g * s, -1),
                        n_keys, limit, key_range)  # [B * H_kv, G * S, K]
    return rows.view(b, h_kv * g, s, rows.shape[-1])


def _collect(infos: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, Any]:
    """Per-block route info (dicts of scalars) -> one list per key, ``0`` where absent."""
    keys = tuple(dict.fromkeys([*keys, *(key for info in infos for key in info)]))
    return {key: [info.get(key, 0) for info in infos] for key in keys}


def clustered_select(
    q: Tensor,
    k: Tensor,
    *,
    causal: bool,
    block_size: int | None,
    clusters_per_query: int,
    fit: FitFn,
    route: RouteFn,
    method: str,
    info: dict[str, Any],
    route_keys: tuple[str, ...] = ("n_clusters",),
) -> Selection:
    """Fit and route over the causal block scheme (or once, non-causal) and build the Selection.

    Args:
        q: ``[B, H, N_q, D]``; k: ``[B, H_kv, N_k, D]``. Queries are end-aligned with keys
            (query ``i`` sees keys ``<= i + N_k - N_q``), so ``N_q != N_k`` works too.
        block_size: causal block length ``S``; None = :func:`default_block_size`.
        clusters_per_query: clusters each query reads (more than exist = all of them).
        fit, route: the method (see :data:`FitFn`, :data:`RouteFn`).
        info: method parameters to report. Causal: the route info is merged in as lists
            with one entry per block that holds queries (``0`` where the prefix is empty;
            ``route_keys`` are listed even when no block has a prefix), plus ``block_size``
            and ``n_blocks``. Non-causal: the route info's scalars, ``block_size=None``.
    Returns:
        Selection with ``indices [B, H, N_q, K]``, rows sorted, no duplicates, causally
        invisible keys never listed.
    """
    b, h, n_q, _ = q.shape
    n_k = k.shape[2]
    device = q.device
    with torch.no_grad():
        if not causal:
            scores, members, route_info = route(fit(q, k, 0), q)
            idx = cluster_index_rows(scores, members, clusters_per_query, n_k)  # [B, H, N_q, K]
            return Selection(idx, n_k, False, method, {**info, "block_size": None, **route_info})

        s = default_block_size(n_k) if block_size is None else block_size
        off = causal_offset(n_q, n_k)
        limit = query_key_limit(n_q, n_k, True, device)  # [N_q]
        parts: list[tuple[int, Tensor]] = []  # (first query row, rows [B, H, S', K_b])
        infos: list[dict[str, Any]] = []
        first_row = min(max(-off, 0), n_q)
        if first_row > 0:  # queries before the first key (N_q > N_k) see nothing
            parts.append((0, torch.full((b, h, first_row, 1), -1, dtype=torch.long, device=device)))
        for blk in range(math.ceil(n_k / s)):
            start = blk * s  # first key of the block = length of the prefix
            lo, hi = (min(max(p - off, 0), n_q) for p in (start, start + s))
            if hi == lo:  # no query ends in this block (e.g. a KV cache longer than N_q)
                continue
            # (i) local block: keys [start, start + S), passed as a range and masked causally
            # (listing them would write S more candidates per query).
            local = (start, min(start + s, n_k))
            if start > 0:  # (ii) clusters fitted on the prefix keys [0, start) only
                scores, members, block_info = route(fit(q[:, :, :lo], k[:, :, :start], blk), q[:, :, lo:hi])
                rows = cluster_index_rows(scores, members, clusters_per_query, n_k, limit[lo:hi], local)
            else:
                block_info = {}
                rows = compact_rows(torch.full((b, h, hi - lo, 0), -1, dtype=torch.long, device=device), n_k,
                                       limit[lo:hi], key_range=local)
            infos.append(block_info)
            parts.append((lo, rows))  # [B, H, S', K_b]
        width = max(rows.shape[-1] for _, rows in parts)
        idx = torch.empty(b, h, n_q, width, dtype=torch.long, device=device)  # [B, H, N_q, K]
        for lo, rows in parts:  # each slot written once: the block's rows, then their padding
            hi, k_b = lo + rows.shape[2], rows.shape[3]
            idx[:, :, lo:hi, :k_b] = rows
            idx[:, :, lo:hi, k_b:] = -1
        del parts
    report = {**info, "block_size": s, "n_blocks": len(infos), **_collect(infos, route_keys)}
    return Selection(idx, n_k, True, method, report)

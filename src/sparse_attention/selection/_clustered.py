"""Block and cluster plumbing shared by the clustering selectors (``ssa``, ``routing``).

A clustering selector only has to say, for a set of queries and a set of *context* keys,
which context keys each query reaches through its clusters (a ``route`` function). This
module handles the rest:

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
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor

from ..ops.validation import causal_offset
from ..utils.checks import check_int
from ._util import compact_indices, make_generator, query_key_limit
from .base import Selection

#: ``route(q_blk [B, H, S, D], q_ctx [B, H, P_q, D], k_ctx [B, H_kv, P, D], block)`` ->
#: ``(candidates [B, H, S, W] key positions in [0, P) or -1, info dict of scalars)``.
#: ``q_ctx`` are the queries at positions before the block (all queries when non-causal).
RouteFn = Callable[[Tensor, Tensor, Tensor, int], tuple[Tensor, dict[str, Any]]]


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


def route_to_members(scores: Tensor, members: Tensor, clusters_per_query: int) -> Tensor:
    """Keys reached by each query through its best clusters.

    Args:
        scores: ``[B, H_kv, G, S, C]`` query-to-centroid affinity (larger = closer), query
            head ``h`` being ``(h // G, h % G)``.
        members: ``[B, H_kv, C, M]`` key positions per cluster, ``-1`` padding.
        clusters_per_query: clusters per query; more than ``C`` means all of them.
    Returns:
        ``[B, H, S, c * M]`` candidate key positions (``c = min(clusters_per_query, C)``),
        possibly with duplicates when clusters overlap.
    """
    b, h_kv, g, s, n_c = scores.shape
    m = members.shape[-1]
    chosen = scores.topk(min(clusters_per_query, n_c), dim=-1).indices  # [B, H_kv, G, S, c]
    # Flatten (cluster, slot) so one gather per KV head fetches all member lists.
    flat_pos = chosen.unsqueeze(-1) * m + torch.arange(m, device=scores.device)  # [B, H_kv, G, S, c, M]
    cand = torch.gather(members.reshape(b, h_kv, n_c * m), 2, flat_pos.reshape(b, h_kv, -1))
    return cand.reshape(b, h_kv * g, s, -1)


def _pad_width(idx: Tensor, width: int) -> Tensor:
    extra = width - idx.shape[-1]
    return idx if extra == 0 else torch.nn.functional.pad(idx, (0, extra), value=-1)


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
    route: RouteFn,
    method: str,
    info: dict[str, Any],
    route_keys: tuple[str, ...] = ("n_clusters",),
) -> Selection:
    """Run ``route`` over the causal block scheme (or once, non-causal) and build the Selection.

    Args:
        q: ``[B, H, N_q, D]``; k: ``[B, H_kv, N_k, D]``. Queries are end-aligned with keys
            (query ``i`` sees keys ``<= i + N_k - N_q``), so ``N_q != N_k`` works too.
        block_size: causal block length ``S``; None = :func:`default_block_size`.
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
            cand, route_info = route(q, q, k, 0)  # [B, H, N_q, W]
            idx = compact_indices(cand, n_k)
            return Selection(idx, n_k, False, method, {**info, "block_size": None, **route_info})

        s = default_block_size(n_k) if block_size is None else block_size
        off = causal_offset(n_q, n_k)
        limit = query_key_limit(n_q, n_k, True, device)  # [N_q]
        parts: list[Tensor] = []
        infos: list[dict[str, Any]] = []
        first_row = min(max(-off, 0), n_q)
        if first_row > 0:  # queries before the first key (N_q > N_k) see nothing
            parts.append(torch.full((b, h, first_row, 1), -1, dtype=torch.long, device=device))
        for blk in range(math.ceil(n_k / s)):
            start = blk * s  # first key of the block = length of the prefix
            lo, hi = (min(max(p - off, 0), n_q) for p in (start, start + s))
            if hi == lo:  # no query ends in this block (e.g. a KV cache longer than N_q)
                continue
            # (i) local block: keys [start, start + S), passed as a range and masked causally
            # by compact_indices (listing them would write S more candidates per query).
            local = (start, min(start + s, n_k))
            prefix_cand = torch.full((b, h, hi - lo, 0), -1, dtype=torch.long, device=device)
            block_info: dict[str, Any] = {}
            if start > 0:  # (ii) clusters fitted on the prefix keys [0, start) only
                prefix_cand, block_info = route(q[:, :, lo:hi], q[:, :, :lo], k[:, :, :start], blk)
            infos.append(block_info)
            parts.append(compact_indices(prefix_cand, n_k, limit[lo:hi], key_range=local))  # [B, H, S', K_b]
        width = max(p.shape[-1] for p in parts)
        idx = torch.cat([_pad_width(p, width) for p in parts], dim=2)  # [B, H, N_q, K]
    report = {**info, "block_size": s, "n_blocks": len(infos), **_collect(infos, route_keys)}
    return Selection(idx, n_k, True, method, report)

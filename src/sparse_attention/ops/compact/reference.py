"""Row compaction in PyTorch: candidate lists -> ascending, duplicate-free index rows by two sorts.

The oracle of :mod:`.cpu` for all three entry points (any device): :func:`compact_rows_reference`,
:func:`cluster_rows_reference` (the union of chosen clusters' members) and
:func:`lsh_rows_reference` (the LSH selection's rows from keys sorted by bucket).
"""

from __future__ import annotations

import torch
from torch import Tensor


def compact_rows_reference(indices: Tensor, n_keys: int, limit: Tensor | None = None,
                           key_range: tuple[int, int] | None = None) -> Tensor:
    """Sort each row, drop duplicates and invalid entries, trim to the widest row.

    Args:
        indices: ``[..., N_q, M]`` candidate key positions (integer; negative = none).
        n_keys: ``N_k``; positions ``>= N_k`` are dropped.
        limit: optional ``[N_q]`` last visible key per query; larger positions are dropped.
        key_range: optional ``(start, stop)``: every row also holds keys ``[start, stop)`` (up
            to its limit) without listing them, e.g. a causal block's own keys.
    Returns:
        ``[..., N_q, K]`` int64, ascending positions first, ``-1`` padding, ``K = max(1, widest row)``.
    """
    if key_range is not None:  # list the range's keys in every row
        keys = torch.arange(key_range[0], max(key_range), device=indices.device)
        indices = torch.cat([indices.long(), keys.expand(*indices.shape[:-1], keys.numel())], dim=-1)
    idx = indices.long()
    invalid = idx < 0
    if limit is not None:
        invalid |= idx > limit[:, None]
    idx = torch.where(invalid, torch.full_like(idx, n_keys), idx)
    idx, _ = idx.sort(dim=-1)
    duplicate = torch.zeros_like(idx, dtype=torch.bool)
    duplicate[..., 1:] = idx[..., 1:] == idx[..., :-1]
    idx = torch.where(duplicate, torch.full_like(idx, n_keys), idx)
    idx, _ = idx.sort(dim=-1)
    valid_counts = (idx < n_keys).sum(dim=-1)
    width = max(1, int(valid_counts.max())) if valid_counts.numel() else 1
    idx = torch.nn.functional.pad(idx[..., :width], (0, max(0, width - idx.shape[-1])), value=n_keys)  # M = 0: one slot
    return torch.where(idx >= n_keys, torch.full_like(idx, -1), idx)


def cluster_rows_reference(members: Tensor, chosen: Tensor, n_keys: int, limit: Tensor | None = None,
                           key_range: tuple[int, int] | None = None) -> Tensor:
    """The members of each row's chosen clusters, gathered into one candidate list, then compacted.

    Args: ``members [Gm, C, M]`` (``-1`` padding), ``chosen [Gm, Q, c]``, ``limit [N_q]`` (row ``q``
    uses ``limit[q % N_q]``); as :func:`~sparse_attention.ops.compact.cluster_rows`.
    Returns: ``[Gm, Q, K]`` int64.
    """
    gm, n_c, m = members.shape
    q, c = chosen.shape[1], chosen.shape[2]
    flat_pos = chosen.long().unsqueeze(-1) * m + torch.arange(m, device=members.device)  # [Gm, Q, c, M]
    cand = torch.gather(members.long().reshape(gm, n_c * m), 1, flat_pos.reshape(gm, -1)).view(gm, q, c * m)
    if limit is not None:  # per row: limit[q % N_q]
        n_q = limit.numel()
        cand = cand.view(gm, q // n_q, n_q, c * m)
        return compact_rows_reference(cand, n_keys, limit, key_range).view(gm, q, -1)
    return compact_rows_reference(cand, n_keys, None, key_range)


def round_candidates(order: Tensor, lo: Tensor, at: Tensor, hi: Tensor, pos: Tensor, window: int,
                     causal: bool) -> Tensor:
    """Keys one hash round lets each query row see.

    Args: ``order [..., N_k]``, ``lo, at, hi [..., M]``, ``pos [M]``: see :func:`lsh_rows_reference`.
    Returns:
        ``[..., M, window]`` key positions, ``-1`` = none: causal, the ``window`` keys of
        ``order[lo:at]`` nearest its end (the most recent same-bucket keys); non-causal, the
        ``window`` keys of the bucket nearest to ``pos`` (ties to the earlier key).
    """
    n_k = order.shape[-1]
    if causal:
        # The most recent `window` same-bucket keys at or before pos.
        slots = at[..., None] - window + torch.arange(window, device=order.device)  # [..., M, W]
    else:
        # The nearest `window` same-bucket keys form a run of sorted order within
        # [at - W, at + W): take those 2W candidates, keep the W closest to pos.
        slots = at[..., None] - window + torch.arange(2 * window, device=order.device)  # [..., M, 2W]
    inside = (slots >= lo[..., None]) & (slots < hi[..., None])
    flat = slots.clamp(0, n_k - 1).flatten(-2)  # [..., M * W']
    cand = order.gather(-1, flat).view_as(slots)
    if not causal:
        # Distance with ties broken towards the earlier key: unique, so the choice is deterministic.
        dist = 2 * (cand - pos[:, None]).abs() + (cand > pos[:, None]).long()
        dist = torch.where(inside, dist, torch.full_like(dist, 4 * n_k + 4))
        keep = dist.topk(window, dim=-1, largest=False).indices  # [..., M, W]
        cand, inside = cand.gather(-1, keep), inside.gather(-1, keep)
    return torch.where(inside, cand, torch.full_like(cand, -1))


def lsh_rows_reference(order: Tensor, lo: Tensor, at: Tensor, hi: Tensor, pos: Tensor, window: int, causal: bool,
                       include_self: bool, n_keys: int) -> Tensor:
    """Each round's candidates (:func:`round_candidates`), the row's own key, then compaction.

    Args: as :func:`~sparse_attention.ops.compact.lsh_rows`. Returns: ``[Gk, M, K]`` int64.
    """
    order, lo, at, hi, pos = (t.long() for t in (order, lo, at, hi, pos))
    parts = [round_candidates(order[t], lo[t], at[t], hi[t], pos, window, causal) for t in range(order.shape[0])]
    if include_self:
        parts.append(pos.expand(order.shape[1], -1)[..., None])  # -1 (none) where pos < 0
    cand = torch.cat(parts, dim=-1)  # [Gk, M, rounds * W (+1)]
    return compact_rows_reference(cand, n_keys, pos if causal else None)

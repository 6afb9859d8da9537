"""Row compaction: candidate key lists -> ascending, duplicate-free index rows (``ssa``, ``routing``,
``lsh``). ``reference.py`` (the oracle), ``cpu.py`` + ``csrc/`` (bitmap kernels),
``implementations.py`` (what each supports)."""

from __future__ import annotations

from torch import Tensor

from .implementations import CLUSTER_ROWS, COMPACT_ROWS, LSH_ROWS


def compact_rows(indices: Tensor, n_keys: int, limit: Tensor | None = None, key_range: tuple[int, int] | None = None,
                 *, implementation: str = "auto") -> Tensor:
    """Sort each row, drop duplicates and invalid entries, trim to the widest row.

    Args:
        indices: ``[..., N_q, M]`` candidate key positions (integer; negative = none).
        n_keys: ``N_k``; positions ``>= N_k`` are dropped.
        limit: optional ``[N_q]`` last visible key per query; larger positions are dropped.
        key_range: optional ``(start, stop)``, ``start >= 0``: every row also holds keys
            ``[start, stop)`` (up to its limit) without listing them, e.g. a causal block's own keys.
    Returns:
        ``[..., N_q, K]`` int64, ascending positions first, ``-1`` padding, ``K = max(1, widest row)``.
    """
    if key_range is not None and key_range[0] < 0:
        raise ValueError(f"key_range must start at a key position >= 0, got {key_range}")
    return COMPACT_ROWS.choose(implementation, indices).run(indices, n_keys, limit, key_range)


def cluster_rows(members: Tensor, chosen: Tensor, n_keys: int, limit: Tensor | None = None,
                 key_range: tuple[int, int] | None = None, *, implementation: str = "auto") -> Tensor:
    """Index rows of the clustering selections: the union of the chosen clusters' members.

    Args:
        members: ``[Gm, C, M]`` key positions of each of ``C`` clusters per group (``-1`` padding).
        chosen: ``[Gm, Q, c]`` clusters read by each of the group's ``Q`` query rows.
        n_keys: ``N_k``. limit: optional ``[N_q]`` last visible key, row ``q`` using
            ``limit[q % N_q]``. key_range: keys ``[start, stop)`` every row holds too.
    Returns:
        ``[Gm, Q, K]`` int64, ascending unique positions, ``-1`` padding, ``K = max(1, widest row)``.
    """
    return CLUSTER_ROWS.choose(implementation, members).run(members, chosen, n_keys, limit, key_range)


def lsh_rows(order: Tensor, lo: Tensor, at: Tensor, hi: Tensor, pos: Tensor, window: int, causal: bool,
             include_self: bool, n_keys: int, *, implementation: str = "auto") -> Tensor:
    """Index rows of the LSH selection from the keys sorted by bucket.

    Args:
        order: ``[T, Gk, N_k]`` per hash round and KV group, key positions sorted by (bucket, position).
        lo, at, hi: ``[T, Gk, M]`` per query row: its bucket's run ``[lo, hi)`` of ``order`` and
            the end ``at`` of the run's keys at positions ``<= pos``.
        pos: ``[M]`` the row's end-aligned position. window: keys per row and round.
        causal: take the ``window`` keys before ``at``; otherwise the ``window`` keys of the run
            nearest to ``pos`` (ties to the earlier key). include_self: add the key at ``pos``.
    Returns:
        ``[Gk, M, K]`` int64, the union over rounds ascending and unique, ``-1`` padding.
    """
    return LSH_ROWS.choose(implementation, order).run(order, lo, at, hi, pos, window, causal, include_self, n_keys)


__all__ = ["CLUSTER_ROWS", "COMPACT_ROWS", "LSH_ROWS", "cluster_rows", "compact_rows", "lsh_rows"]

"""Candidate lists (or chosen clusters) -> sorted unique index rows on CPU (``csrc/compact_cpu.cpp``).

The clustering and hashing selections build per-query candidate lists with duplicates and
padding; this turns them into the ascending, duplicate-free rows the kernels read with one
bitmap pass per row instead of two sorts. Each function returns exactly what its sort-based
reference in :mod:`.reference` returns.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from ..cpp.build import CppExtension

EXTENSION = CppExtension("compact", Path(__file__).with_name("csrc"))


def supports(first: Tensor, *inputs, **options) -> str | None:
    """None when the kernels can run on inputs whose first tensor is ``first`` (a CPU tensor)."""
    return None if first.device.type == "cpu" else f"runs on CPU tensors only, got {first.device.type}"


def compact_rows(indices: Tensor, n_keys: int, limit: Tensor | None = None, key_range: tuple[int, int] | None = None,
                 isa: str | None = None) -> Tensor:
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
    *lead, n_q, m = indices.shape
    flat = indices.reshape(math.prod(lead) * n_q, m).long()  # [R, M]
    lim = torch.empty(0, dtype=torch.long) if limit is None else limit.long().reshape(n_q)
    start, stop = (0, 0) if key_range is None else (int(key_range[0]), int(key_range[1]))
    out = EXTENSION.require(isa).compact_rows(flat, int(n_keys), lim, start, stop)  # [R, K]
    return out.view(*lead, n_q, out.shape[-1])


def cluster_rows(members: Tensor, chosen: Tensor, n_keys: int, limit: Tensor | None = None,
                 key_range: tuple[int, int] | None = None, isa: str | None = None) -> Tensor:
    """Index rows of the clustering selections: the union of the chosen clusters' members.

    Args:
        members: ``[Gm, C, M]`` key positions of each of ``C`` clusters per group (``-1`` padding).
        chosen: ``[Gm, Q, c]`` clusters read by each of the group's ``Q`` query rows.
        n_keys: ``N_k``. limit: optional ``[N_q]`` last visible key, row ``q`` using
            ``limit[q % N_q]``. key_range: keys ``[start, stop)`` every row holds too.
    Returns:
        ``[Gm, Q, K]`` int64, ascending unique positions, ``-1`` padding, ``K = max(1, widest
        row)``: what :func:`compact_rows` returns for the gathered member lists, without
        gathering them.
    """
    lim = torch.empty(0, dtype=torch.long) if limit is None else limit.long().reshape(-1)
    start, stop = (0, 0) if key_range is None else (int(key_range[0]), int(key_range[1]))
    return EXTENSION.require(isa).cluster_rows(members.long(), chosen.long(), int(n_keys), lim, start, stop)


def lsh_rows(order: Tensor, lo: Tensor, at: Tensor, hi: Tensor, pos: Tensor, window: int, causal: bool,
             include_self: bool, n_keys: int, isa: str | None = None) -> Tensor:
    """Index rows of the LSH selection from the keys sorted by bucket (``selection.lsh``).

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
    return EXTENSION.require(isa).lsh_rows(order.long(), lo.long(), at.long(), hi.long(), pos.long(), int(window),
                                       bool(causal), bool(include_self), int(n_keys))

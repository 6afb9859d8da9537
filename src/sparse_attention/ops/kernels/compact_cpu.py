"""Candidate lists -> sorted unique index rows on CPU (``csrc/compact_rows_cpu.cpp``).

The clustering and hashing selections build per-query candidate lists with duplicates and
padding; this turns them into the ascending, duplicate-free rows the kernels read with one
bitmap pass per row instead of two sorts. :func:`compact_rows` returns exactly what the
sort-based reference (``selection._util.compact_indices_reference``) returns.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import cpu


def available(indices: Tensor, isa: str | None = None) -> bool:
    """Whether :func:`compact_rows` can run on ``indices`` (a CPU tensor, extension built)."""
    return indices.device.type == "cpu" and cpu.load_error(isa) is None


def compact_rows(indices: Tensor, n_keys: int, limit: Tensor | None = None, isa: str | None = None) -> Tensor:
    """Sort each row, drop duplicates and invalid entries, trim to the widest row.

    Args:
        indices: ``[..., N_q, M]`` candidate key positions (integer; negative = none).
        n_keys: ``N_k``; positions ``>= N_k`` are dropped.
        limit: optional ``[N_q]`` last visible key per query; larger positions are dropped.
    Returns:
        ``[..., N_q, K]`` int64, ascending positions first, ``-1`` padding, ``K = max(1, widest row)``.
    """
    *lead, n_q, m = indices.shape
    flat = indices.reshape(-1, m).long()  # [R, M]
    lim = torch.empty(0, dtype=torch.long) if limit is None else limit.long().reshape(n_q)
    out = cpu.extension(isa).compact_rows(flat, int(n_keys), lim)  # [R, K]
    return out.view(*lead, n_q, out.shape[-1])

"""Small tensor helpers shared by selection methods."""

from __future__ import annotations

import torch
from torch import Tensor

from ..ops.kernels import compact_cpu
from ..ops.validation import causal_offset
from ..utils.checks import check_int
from .key_mask import mask_scores


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A seeded generator; random draws happen on CPU so results match across devices."""
    check_int("seed", seed, 0)
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed)
    return gen


def query_key_limit(n_q: int, n_k: int, causal: bool, device) -> Tensor:
    """``[N_q]`` last key position each query may see (``N_k - 1`` when not causal)."""
    rows = torch.arange(n_q, device=device)
    if causal:
        return rows + causal_offset(n_q, n_k)
    return torch.full_like(rows, n_k - 1)


def compact_indices(indices: Tensor, n_keys: int, limit: Tensor | None = None,
                    key_range: tuple[int, int] | None = None) -> Tensor:
    """Sort each row, drop duplicates and invalid entries, trim to the longest row.

    Args:
        indices: ``[..., N_q, M]`` candidate key positions, ``-1`` (or any negative) = none.
        n_keys: ``N_k``.
        limit: optional ``[N_q]`` last allowed key per query (causal); larger entries drop.
        key_range: optional ``(start, stop)``, ``0 <= start``: keys ``[start, stop)`` are
            candidates of every row too (a causal block's own keys), without being listed.
    Returns:
        ``[..., N_q, K]`` int64, valid ascending positions first, ``-1`` padding, with
        ``K = max(1, most valid entries in any row)``. On CPU the C++ bitmap pass
        (:mod:`~sparse_attention.ops.kernels.compact_cpu`) computes it; elsewhere, or without
        the extension, :func:`compact_indices_reference`. Both give the same tensor.
    """
    if key_range is not None and key_range[0] < 0:
        raise ValueError(f"key_range must start at a key position >= 0, got {key_range}")
    if compact_cpu.available(indices):
        return compact_cpu.compact_rows(indices, n_keys, limit, key_range)
    return compact_indices_reference(indices, n_keys, limit, key_range)


def compact_indices_reference(indices: Tensor, n_keys: int, limit: Tensor | None = None,
                              key_range: tuple[int, int] | None = None) -> Tensor:
    """:func:`compact_indices` by two sorts per row (any device; the reference of the CPU kernel)."""
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


def chunked_topk(score_fn, n_q: int, n_k: int, top_k: int, *, causal: bool, device, budget: int = 1 << 24,
                 rows_per_query: int = 1, key_mask: Tensor | None = None) -> Tensor:
    """Top-k key positions per query from scores computed chunk by chunk.

    Args:
        score_fn: ``score_fn(start, stop, key_stop) -> [..., stop - start, key_stop]`` scores of
            queries ``[start, stop)`` against keys ``[0, key_stop)``. Causal chunks ask only for
            the keys some query of the chunk can see, which halves the work on average.
        top_k: keys kept per query; ``K = min(top_k, N_k)`` slots.
        rows_per_query: score rows per query (e.g. B * H) to size the chunk to ``budget``.
        key_mask: optional ``[B, N_k]`` bool, False = padding: those keys score ``-inf`` (the
            scores' first dimension must be the batch).
    Returns:
        ``[..., N_q, K]`` int64 in no particular order; ``-1`` where a row has fewer than
        ``K`` allowed keys (causal prefix) or the score is ``-inf``.
    """
    k_eff = min(top_k, n_k)
    chunk = max(1, min(n_q, budget // max(1, n_k * rows_per_query)))
    limit = query_key_limit(n_q, n_k, causal, device)
    parts = []
    for start in range(0, n_q, chunk):
        stop = min(start + chunk, n_q)
        key_stop = min(n_k, int(limit[stop - 1]) + 1) if causal else n_k
        if key_stop <= 0:  # queries before the first key (N_q > N_k): nothing visible
            shape = score_fn(start, stop, 1).shape[:-1]
            parts.append(torch.full((*shape, k_eff), -1, dtype=torch.long, device=device))
            continue
        scores = score_fn(start, stop, key_stop).float()  # [..., C, key_stop]
        if key_mask is not None:  # padded keys never win a slot
            mask_scores(scores, key_mask)
        if causal:  # causal mask before top-k, only where some row of the chunk is cut off
            first = max(0, int(limit[start]) + 1)
            if first < key_stop:
                cols = torch.arange(first, key_stop, device=device)
                scores[..., first:key_stop].masked_fill_(cols[None, :] > limit[start:stop, None], float("-inf"))
        values, idx = scores.topk(min(k_eff, key_stop), dim=-1, sorted=False)  # order is irrelevant: ~1.5x faster
        # ...and after: slots that only hold masked keys become empty (DeepSeek re-applies it).
        idx = torch.where(values == float("-inf"), torch.full_like(idx, -1), idx)
        if idx.shape[-1] < k_eff:
            idx = torch.nn.functional.pad(idx, (0, k_eff - idx.shape[-1]), value=-1)
        parts.append(idx)
    return torch.cat(parts, dim=-2)


#: how top-k selections score keys: ``fused`` = the C++ kernel that scores and selects in one
#: pass (CPU; memory O(N_q * K)), ``chunked`` = torch GEMMs over query chunks + ``torch.topk``
#: (any device; memory O(chunk * N_k)), ``auto`` = fused wherever it runs.
SCORING_MODES = ("auto", "fused", "chunked")


def use_fused_scoring(scoring: str, *tensors: Tensor, precision: str = "float32") -> bool:
    """Whether a top-k selection should run the fused kernel on ``tensors``.

    ``auto`` picks it when it can run them (CPU, float32/bf16/fp16, extension built);
    ``fused`` raises ``ValueError`` with the reason when it cannot; ``chunked`` never uses it.
    """
    if scoring not in SCORING_MODES:
        raise ValueError(f"scoring must be one of {SCORING_MODES}, got {scoring!r}")
    if scoring == "chunked":
        return False
    from ..ops.kernels.topk_cpu import unsupported_reason

    reason = unsupported_reason(*tensors, precision=precision)
    if reason is not None and scoring == "fused":
        raise ValueError(f"scoring='fused' cannot run these inputs: {reason}")
    return reason is None


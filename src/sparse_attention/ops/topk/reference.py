"""Scored top-k in PyTorch: the indexer score formula (written once, here) and the chunked top-k.

The oracle of :mod:`.cpu` and of every other place that scores keys the lightning-indexer way
(the DSA layer's training path, its ONNX graph, the statistics): any device, autograd through
the scores, memory O(chunk * N_k), never N_q x N_k for long sequences.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..validation import query_key_limit


def weighted_scores(q: Tensor, k: Tensor, weights: Tensor | None = None, *, relu: bool = True,
                    group: int = 1) -> Tensor:
    """``I[r, t, s] = sum_j w[r, t, j] * f(q[r, j, t] . k[r // group, s])``, ``f`` = ReLU or identity.

    The lightning indexer (DeepSeek-V3.2, Eq. 1) is ``R = B``, ``J = H_I`` heads, ``f`` = ReLU;
    exact top-k is ``R = B * H``, ``J = 1``, no weights, identity, ``group = H / H_kv``.

    Args:
        q: ``[R, J, C, D]`` queries of ``J`` heads whose scores are summed.
        k: ``[R // group, N, D]`` keys; row ``r`` scores against key row ``r // group``.
        weights: ``[R, C, J]`` per-query head weights, or None for all ones.
    Returns:
        ``[R, C, N]`` in the inputs' dtype; one GEMM per key row and one batched matmul for the
        weighted head sum, which also gives autograd a cheap backward (no per-head temporaries).
    """
    r, j, c, d = q.shape
    rk, n = k.shape[0], k.shape[1]
    rows = q.transpose(1, 2).reshape(rk, group * c * j, d)  # [R // group, G * C * J, D]: rows (g, t, j)
    logits = (rows @ k.transpose(-1, -2)).view(r * c, j, n)  # [R * C, J, N]
    if relu:
        logits = torch.relu_(logits) if not logits.requires_grad else torch.relu(logits)
    if weights is None:
        return (logits[:, 0] if j == 1 else logits.sum(dim=1)).view(r, c, n)
    return (weights.reshape(r * c, 1, j).to(logits.dtype) @ logits).view(r, c, n)  # [R, C, N]


def indexer_scores(index_q: Tensor, index_k: Tensor, weights: Tensor, query_slice: slice | None = None,
                   key_stop: int | None = None) -> Tensor:
    """Lightning indexer scores ``I[b, t, s] = sum_j w[b, t, j] * ReLU(q_I[b, j, t] . k_I[b, s])``.

    Args:
        index_q: ``[B, H_I, N_q, D_I]`` indexer queries.
        index_k: ``[B, N_k, D_I]`` the single shared indexer key head.
        weights: ``[B, N_q, H_I]`` per-token per-head weights ``w``.
        query_slice: which queries (default all). key_stop: score keys ``[0, key_stop)`` only.
    Returns:
        ``[B, C, key_stop]`` scores, no causal mask applied; differentiable.
    """
    query_slice = query_slice or slice(0, index_q.shape[2])
    keys = index_k if key_stop is None else index_k[:, :key_stop]
    return weighted_scores(index_q[:, :, query_slice], keys, weights[:, query_slice], relu=True)


def chunked_topk(score_fn, n_q: int, n_k: int, top_k: int, *, causal: bool, device, budget: int = 1 << 24,
                 rows_per_query: int = 1, key_mask: Tensor | None = None) -> Tensor:
    """Top-k key positions per query from scores computed chunk by chunk.

    Args:
        score_fn: ``score_fn(start, stop, key_stop) -> [R, stop - start, key_stop]`` scores of
            queries ``[start, stop)`` against keys ``[0, key_stop)``. Causal chunks ask only for
            the keys some query of the chunk can see, which halves the work on average.
        top_k: keys kept per query; ``K = min(top_k, N_k)`` slots.
        rows_per_query: score rows per query (e.g. B * H) to size the chunk to ``budget``.
        key_mask: optional ``[R, N_k]`` bool, False = padding: those keys score ``-inf``.
    Returns:
        ``[R, N_q, K]`` int64 in no particular order; ``-1`` where a row has fewer than
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
        scores = score_fn(start, stop, key_stop).float()  # [R, C, key_stop]
        if key_mask is not None:  # padded keys never win a slot
            scores.masked_fill_(~key_mask[:, None, :key_stop], float("-inf"))
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


def scored_topk_reference(q: Tensor, k: Tensor, weights: Tensor | None, *, top_k: int, causal: bool, relu: bool,
                          group: int = 1, precision: str = "float32", key_mask: Tensor | None = None) -> Tensor:
    """:func:`~sparse_attention.ops.topk.scored_topk` by :func:`weighted_scores` over query chunks and
    ``torch.topk`` (any device). ``precision="bfloat16"`` rounds ``q`` and ``k`` to bf16 and sums in
    fp32, the arithmetic of the CPU kernel. ``key_mask``: ``[R // group, N_k]`` bool."""
    if precision == "bfloat16":
        q, k = q.to(torch.bfloat16).float(), k.to(torch.bfloat16).float()
    r, j, n_q, _ = q.shape
    n_k = k.shape[1]
    rows_mask = None if key_mask is None else key_mask.repeat_interleave(group, dim=0)  # [R, N_k]

    def scores(start: int, stop: int, key_stop: int) -> Tensor:
        w = None if weights is None else weights[:, start:stop]
        return weighted_scores(q[:, :, start:stop], k[:, :key_stop], w, relu=relu, group=group)

    return chunked_topk(scores, n_q, n_k, top_k, causal=causal, device=q.device, rows_per_query=r * j,
                        key_mask=rows_mask)

"""The DSA sparse-stage indexer loss in PyTorch (DeepSeek-V3.2 report, Eq. 4): the oracle of :mod:`.cpu`.

For each query ``t`` with selected keys ``S_t``: the target is the sparse attention actually used
(each head's softmax restricted to ``S_t``, summed over heads, normalised), the prediction the
indexer's softmax over its logits at ``S_t``, and the loss their KL, averaged over rows with a key.
Chunked over queries: O(N K) time and memory, any device.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .selected_scores import CHUNK_ELEMENTS, gather_rows, selected_indexer_scores


@torch.no_grad()
def sparse_attention_target(q: Tensor, k: Tensor, indices: Tensor, *, scale: float | None = None) -> Tensor:
    """The sparse attention over the selected keys, summed over heads and L1-normalised.

    Args:
        q: ``[B, H, N, D]``; k: ``[B, H_kv, N, D]``.
        indices: ``[B, N, K]`` selected key positions shared by all heads, ``-1`` = empty slot.
    Returns:
        ``p [B, N, K]`` float32 over the slots; empty slots 0; rows sum to 1 where a key is selected.
    """
    b, h, n, d = q.shape
    h_kv = k.shape[1]
    scale = d**-0.5 if scale is None else scale
    top_k = indices.shape[-1]
    # Per chunk of queries, the logits of every head at its selected keys only: [B, H_kv, G, C, K],
    # gathering [B, H_kv, C, K, D] key rows, so memory is O(N K) per chunk, never [B, H, N, N].
    chunk = max(1, CHUNK_ELEMENTS // max(1, b * h_kv * top_k * d))
    qg = q.float().view(b, h_kv, h // h_kv, n, d)
    p = q.new_zeros(b, n, top_k, dtype=torch.float32)
    for start in range(0, n, chunk):
        rows = slice(start, min(start + chunk, n))
        idx = indices[:, rows]  # [B, C, K]
        c = idx.shape[1]
        keys = gather_rows(k.float().reshape(b * h_kv, -1, d),
                           idx.repeat_interleave(h_kv, dim=0)).view(b, h_kv, c, top_k, d)  # [B, H_kv, C, K, D]
        logits = torch.einsum("bgjcd,bgckd->bgjck", qg[:, :, :, rows], keys) * scale  # [B, H_kv, G, C, K]
        logits = logits.masked_fill((idx < 0)[:, None, None], float("-inf"))
        p[:, rows] = torch.nan_to_num(torch.softmax(logits, dim=-1), nan=0.0).sum(dim=(1, 2))  # [B, C, K]
    total = p.sum(dim=-1, keepdim=True)
    return p / torch.where(total > 0, total, torch.ones_like(total))


def kl_to_indexer(target: Tensor, scores: Tensor, mask: Tensor) -> Tensor:
    """Mean over rows of ``KL(target || softmax(scores))`` over the allowed entries.

    Args:
        target: ``[..., M]`` rows summing to 1 (0 on disallowed entries), no gradient.
        scores: ``[..., M]`` indexer scores (logits).
        mask: ``[..., M]`` bool, entries taking part in the softmax. Rows with no allowed
            entry are skipped.
    Returns:
        a scalar.
    """
    log_q = torch.log_softmax(scores.float().masked_fill(~mask, float("-inf")), dim=-1)
    # target * (log target - log q), with 0 * log 0 = 0 and masked entries contributing 0.
    log_p = torch.log(target.clamp_min(1e-30))
    terms = torch.where(target > 0, target * (log_p - log_q.masked_fill(~mask, 0.0)), torch.zeros_like(target))
    rows = mask.any(dim=-1)
    return terms.sum(dim=-1)[rows].mean() if rows.any() else scores.sum() * 0.0


def sparse_indexer_loss_reference(q: Tensor, k: Tensor, index_q: Tensor, index_k: Tensor, weights: Tensor,
                                  indices: Tensor, *, scale: float | None = None) -> Tensor:
    """The sparse-stage indexer loss in PyTorch, chunked over queries (O(N K) memory): the
    indexer logits at the selected keys (:func:`selected_indexer_scores`), the sparse attention
    target (:func:`sparse_attention_target`) and the KL (:func:`kl_to_indexer`). Arguments as
    :func:`~sparse_attention.ops.indexer_kl.sparse_indexer_kl`."""
    target = sparse_attention_target(q.detach(), k.detach(), indices, scale=scale)
    selected = selected_indexer_scores(index_q.float(), index_k.float(), weights.float(), indices)
    return kl_to_indexer(target, selected, indices >= 0)


def indexer_loss_from_target_reference(target: Tensor, index_q: Tensor, index_k: Tensor, weights: Tensor,
                                       indices: Tensor) -> Tensor:
    """:func:`sparse_indexer_loss_reference` with the target given (``[B, N, K]``, rows summing to
    1 over the selected keys): the indexer logits there and the KL."""
    selected = selected_indexer_scores(index_q.float(), index_k.float(), weights.float(), indices)
    return kl_to_indexer(target.detach().float(), selected, indices >= 0)

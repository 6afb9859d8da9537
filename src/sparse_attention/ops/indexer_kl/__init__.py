"""The DSA sparse-stage indexer KL (DeepSeek-V3.2 report, Eq. 4). ``reference.py`` (the oracle) and
``selected_scores.py`` (indexer logits at the selected keys), ``cpu.py`` + ``csrc/`` (the fused
kernel), ``implementations.py`` (what each supports)."""

from __future__ import annotations

from torch import Tensor

from .implementations import INDEXER_KL, INDEXER_KL_FROM_TARGET


def sparse_indexer_kl(q: Tensor, k: Tensor, index_q: Tensor, index_k: Tensor, weights: Tensor, indices: Tensor, *,
                      scale: float, implementation: str = "auto") -> Tensor:
    """Mean over query rows with a selected key of ``KL(p || softmax(I))`` over the selected keys.

    Args:
        q: ``[B, H, N, D]``; k: ``[B, H_kv, N, D]`` (no gradient flows into them).
        index_q: ``[B, H_I, N, D_I]``; index_k: ``[B, N, D_I]``; weights: ``[B, N, H_I]``.
        indices: ``[B, N, K]`` selected key positions shared by all heads, ``-1`` = empty slot.
        scale: attention softmax scale.
        implementation: ``"auto"``, ``"fused"`` (CPU kernel) or ``"reference"``.
    Returns:
        a scalar, differentiable in ``index_q``, ``index_k`` and ``weights``.
    """
    chosen = INDEXER_KL.choose(implementation, q, k, index_q, index_k, weights, indices)
    return chosen.run(q, k, index_q, index_k, weights, indices, scale=scale)


def sparse_indexer_kl_from_target(target: Tensor, index_q: Tensor, index_k: Tensor, weights: Tensor, indices: Tensor,
                                  *, implementation: str = "auto") -> Tensor:
    """:func:`sparse_indexer_kl` with the target ``p`` given: ``target`` ``[B, N, K]``, per slot the
    mean over heads of the attention probabilities (rows summing to 1 over the selected keys), as
    :func:`~sparse_attention.ops.attention.sparse_attention_with_head_mean` returns it. Other
    arguments as :func:`sparse_indexer_kl`."""
    if target.shape != indices.shape:
        raise ValueError(f"target must be shaped like indices {tuple(indices.shape)}, got {tuple(target.shape)}")
    chosen = INDEXER_KL_FROM_TARGET.choose(implementation, target, index_q, index_k, weights, indices)
    return chosen.run(target, index_q, index_k, weights, indices)


__all__ = ["INDEXER_KL", "INDEXER_KL_FROM_TARGET", "sparse_indexer_kl", "sparse_indexer_kl_from_target"]

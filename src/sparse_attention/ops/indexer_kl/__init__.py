"""The DSA sparse-stage indexer KL (DeepSeek-V3.2 report, Eq. 4). ``reference.py`` (the oracle) and
``selected_scores.py`` (indexer logits at the selected keys), ``cpu.py`` + ``csrc/`` (the fused
kernel), ``implementations.py`` (what each supports)."""

from __future__ import annotations

from torch import Tensor

from .implementations import INDEXER_KL


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


__all__ = ["INDEXER_KL", "sparse_indexer_kl"]

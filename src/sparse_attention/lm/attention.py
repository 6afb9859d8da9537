"""Attention of the LM: dense, DSA (lightning indexer + top-k) or any selection method.

One module, three modes, chosen per forward call by the trainer:

* ``dense``: SDPA. Used by the dense baseline, and by DSA models for inspection.
* ``warmup``: dense attention output; the indexer (fed ``x.detach()``) is scored against
  the dense attention of the layer (:func:`dense_attention_target`). DSA stage 1.
* ``sparse``: the method's selection and the shared sparse attention kernel. For DSA the
  indexer selects top-k keys and is trained by the KL restricted to its selection, with a
  detached input, so the LM loss never reaches the indexer (indices are integers) and the
  KL never reaches the model. DSA stage 2. Training scores all ``[B, N, N]`` key pairs with
  autograd (at the harness's lengths that is smaller than gathering ``[B, N, K, D_I]`` indexer
  keys); without gradients (evaluation, generation) and without ``collect``/``keep_scores``
  the selection is the fused scoring + top-k of :func:`dsa_select`, memory O(N K), and no
  indexer loss is computed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..layers.attention import AttentionConfig, SparseSelfAttention
from ..ops.dense import causal_mask, dense_attention
from ..ops.sparse_attention import sparse_attention
from ..selection.base import Selection
from ..selection.stats import attention_recall, selection_stats
from .config import ATTENTION_MODES, ModelConfig
from .indexer_loss import (
    dense_attention_target,
    kl_to_indexer,
    sparse_attention_target,
)


@dataclass
class AttentionAux:
    """What a layer reports besides its output.

    Attributes:
        indexer_loss: the KL loss of this layer's indexer (scalar) or None.
        selection: the selection used (``sparse`` mode) or None.
        stats: measured statistics (``collect=True`` only): sparsity, recall, kl, coverage,
            mean distance, and ``oracle_recall``: the recall of the top-k of the head-summed
            dense attention itself, the best any selection shared by all heads can reach.
        indexer_scores: ``[B, N, N]`` causal-masked indexer scores (``keep_scores=True`` only).
    """

    indexer_loss: Tensor | None = None
    selection: Selection | None = None
    stats: dict = field(default_factory=dict)
    indexer_scores: Tensor | None = None


def indexer_scores_for_training(index_q: Tensor, index_k: Tensor, weights: Tensor) -> Tensor:
    """Indexer scores ``I [B, N_q, N_k]`` with a cheap backward.

    Same values as :func:`~sparse_attention.selection.dsa.indexer_scores`, laid out for
    autograd: ``relu(q_I . k_I)`` as ``[B * N_q, H_I, N_k]`` and the weighted head sum as one
    batched matmul ``w [B * N_q, 1, H_I] @ relu``. (The in-place per-head loop of the
    inference path makes autograd zero-fill a full ``[B, H_I, N, N]`` gradient per head.)

    Args: ``index_q [B, H_I, N_q, D_I]``, ``index_k [B, N_k, D_I]``, ``weights [B, N_q, H_I]``.
    """
    b, h_i, n_q, d_i = index_q.shape
    n_k = index_k.shape[1]
    q = index_q.transpose(1, 2).reshape(b, n_q * h_i, d_i)  # [B, N_q * H_I, D_I]
    relu = torch.relu(q @ index_k.transpose(-1, -2)).view(b * n_q, h_i, n_k)  # [B * N_q, H_I, N_k]
    return (weights.reshape(b * n_q, 1, h_i) @ relu).view(b, n_q, n_k)


def _topk_from_scores(scores: Tensor, top_k: int) -> Tensor:
    """``scores [B, N, N]`` (masked keys -inf) -> ``indices [B, N, K]`` with -1 for masked slots."""
    k_eff = min(top_k, scores.shape[-1])
    values, idx = scores.topk(k_eff, dim=-1, sorted=False)
    return torch.where(values == float("-inf"), torch.full_like(idx, -1), idx)


def _coverage(indices: Tensor, n_k: int) -> float:
    """Mean share of key positions selected by at least one query. ``indices [B, 1, N, K]``."""
    b = indices.shape[0]
    flat = indices.reshape(b, -1)
    hit = torch.zeros(b, n_k + 1, dtype=torch.bool, device=indices.device)
    hit.scatter_(1, torch.where(flat >= 0, flat, n_k), True)
    return hit[:, :n_k].float().mean().item()


class LMAttention(SparseSelfAttention):
    """:class:`SparseSelfAttention` with the DSA training modes (see the module docstring)."""

    def __init__(self, config: ModelConfig):
        super().__init__(AttentionConfig(
            dim=config.d_model, n_heads=config.n_heads, n_kv_heads=config.n_kv_heads, method=config.attention,
            method_params=config.selection_params if config.attention != "dense" else {}, causal=True,
            rope_theta=config.rope_theta, indexer_heads=config.indexer_heads,
            indexer_head_dim=config.indexer_head_dim, backend=config.backend,
        ))
        # One source for top_k: the method's parameters (model.method_params over model.top_k, see
        # ModelConfig.selection_params); a dense model keeps model.top_k for its oracle statistics.
        self.top_k = self.config.method_params.get("top_k", config.top_k)

    def forward(self, x: Tensor, mode: str = "dense", *, collect: bool = False,
                keep_scores: bool = False) -> tuple[Tensor, AttentionAux]:
        """``x [B, N, dim]`` -> ``(y [B, N, dim], AttentionAux)``.

        ``collect`` measures statistics (no gradient; costs an extra dense pass);
        ``keep_scores`` returns the masked indexer scores for visualisation.
        """
        if mode not in ATTENTION_MODES:
            raise ValueError(f"mode must be one of {ATTENTION_MODES}, got {mode!r}")
        if mode == "warmup" and self.indexer is None:
            raise ValueError(f"mode 'warmup' needs the lightning indexer (attention 'dsa'), not"
                             f" {self.config.method!r}")
        if mode == "sparse" and self.config.method == "dense":
            raise ValueError("mode 'sparse' needs a selection method; this layer is dense")
        c = self.config
        b, n, _ = x.shape
        q, k, v = self.project(x)
        aux = AttentionAux()
        scores = None
        indexer_params = self.indexer_selection_params() if self.indexer is not None else {}
        if mode == "sparse" and self.indexer is not None and not (torch.is_grad_enabled() or collect or keep_scores):
            # Inference: no indexer loss to compute, so no [B, N, N] score matrix either.
            aux.selection = self.indexer.select(x, causal=True, **indexer_params)
        elif self.indexer is not None and (mode != "dense" or collect or keep_scores):
            index_q, index_k, weights = self.indexer(x.detach())  # detached: the KL trains only the indexer
            if indexer_params["precision"] == "bfloat16":
                # The rounding dsa_select applies, here differentiable (the cast passes gradients on).
                index_q, index_k = index_q.bfloat16().float(), index_k.bfloat16().float()
            scores = indexer_scores_for_training(index_q, index_k, weights).float()  # [B, N, N]
            scores = scores.masked_fill(~causal_mask(n, n, x.device), float("-inf"))
        if mode == "sparse":
            if scores is not None:
                indices = _topk_from_scores(scores.detach(), self.top_k)  # [B, N, K]
                aux.selection = Selection(indices[:, None], n, True, "dsa",
                                          {"top_k": self.top_k, "scoring": "torch.topk of the training scores",
                                           "precision": indexer_params["precision"]})
                target = sparse_attention_target(q.detach(), k.detach(), indices)
                selected = scores.gather(-1, indices.clamp(min=0))
                aux.indexer_loss = kl_to_indexer(target, selected, indices >= 0)
            elif aux.selection is None:
                aux.selection = self.select(x, q, k)
            out = sparse_attention(q, k, v, aux.selection.indices, causal=True, backend=c.backend)
        else:
            out = dense_attention(q, k, v, causal=True)
            if mode == "warmup":
                target = dense_attention_target(q.detach(), k.detach())
                aux.indexer_loss = kl_to_indexer(target, scores, causal_mask(n, n, x.device).expand(b, n, n))
        if collect:
            aux.stats = self._stats(q.detach(), k.detach(), scores, aux.selection)
        if keep_scores and scores is not None:
            aux.indexer_scores = scores.detach()
        y = self.o_proj(out.transpose(1, 2).reshape(b, n, c.n_heads * c.head_dim))
        return y, aux

    @torch.no_grad()
    def _stats(self, q: Tensor, k: Tensor, scores: Tensor | None, selection: Selection | None) -> dict:
        """Sparsity, dense-mass recall, KL, coverage and distance of the selection this layer
        uses (``sparse`` mode) or would use (the indexer's top-k in the other modes)."""
        n = q.shape[2]
        stats: dict = {}
        if scores is not None:
            target = dense_attention_target(q, k)
            visible = causal_mask(n, n, q.device).expand_as(scores)
            stats["indexer_kl"] = kl_to_indexer(target, scores, visible).item()
            # The best any selection shared by all heads can do: top-k of the head-summed attention.
            oracle = _topk_from_scores(target.masked_fill(~visible, float("-inf")), self.top_k)
            stats["oracle_recall"] = float(attention_recall(
                Selection(oracle[:, None], n, True, "oracle", {"top_k": self.top_k}), q, k))
            if selection is None:
                indices = _topk_from_scores(scores, self.top_k)
                selection = Selection(indices[:, None], n, True, "dsa", {"top_k": self.top_k})
        if selection is None:
            return stats
        summary = selection_stats(selection)
        stats["sparsity"] = summary.causal_sparsity
        stats["mean_distance"] = summary.mean_distance
        stats["coverage"] = _coverage(selection.indices, n)
        stats["recall"] = float(attention_recall(selection, q, k))
        return stats

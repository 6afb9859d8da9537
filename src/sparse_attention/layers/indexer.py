"""The DeepSeek lightning indexer as a trainable module."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..ops.topk import indexer_scores
from ..selection.base import Selection
from ..selection.dsa import dsa_select
from ..utils.checks import check_int
from .rope import apply_rope


class LightningIndexer(nn.Module):
    """Scores which past tokens each token should attend to (DeepSeek-V3.2-Exp).

    ``I[t,s] = sum_j w[t,j] * ReLU(q_I[t,j] . k_I[s])`` with ``H_I`` query heads, one shared
    key head with LayerNorm, partial RoPE on the first ``rope_dim`` features, and
    ``w = weights_proj(x) * H_I**-0.5 * D_I**-0.5`` (a plain per-token scalar per head, no
    softmax), following ``class Indexer`` in deepseek-ai/DeepSeek-V3.2-Exp. The FP8 and
    Hadamard-rotation speed tricks are omitted.

    Args:
        dim: model width of the input ``x``.
        n_heads: indexer heads ``H_I``.
        head_dim: indexer head dim ``D_I``.
        rope_dim: features that get RoPE (default ``head_dim // 2``, DeepSeek's 64 of 128).
        rope_theta: RoPE base.
    """

    def __init__(self, dim: int, n_heads: int = 4, head_dim: int = 64, rope_dim: int | None = None,
                 rope_theta: float = 10000.0):
        super().__init__()
        for name, value in (("dim", dim), ("n_heads", n_heads), ("head_dim", head_dim)):
            check_int(name, value)
        self.n_heads, self.head_dim = n_heads, head_dim
        self.rope_dim = head_dim // 2 // 2 * 2 if rope_dim is None else rope_dim
        if self.rope_dim % 2 or not 0 <= self.rope_dim <= head_dim:
            raise ValueError(f"rope_dim must be even and within [0, head_dim={head_dim}], got {rope_dim}")
        self.rope_theta = rope_theta
        self.wq = nn.Linear(dim, n_heads * head_dim, bias=False)
        self.wk = nn.Linear(dim, head_dim, bias=False)
        self.k_norm = nn.LayerNorm(head_dim)
        self.weights_proj = nn.Linear(dim, n_heads, bias=False)

    def forward(self, x: Tensor, positions: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Project ``x [B, N, dim]`` to ``index_q [B, H_I, N, D_I]``, ``index_k [B, N, D_I]``,
        ``weights [B, N, H_I]``."""
        if x.dim() != 3:
            raise ValueError(f"x must be [B, N, dim], got shape {tuple(x.shape)}")
        b, n, _ = x.shape
        positions = torch.arange(n, device=x.device) if positions is None else positions
        index_q = self.wq(x).view(b, n, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H_I, N, D_I]
        index_k = self.k_norm(self.wk(x))  # [B, N, D_I]
        index_q = apply_rope(index_q, positions, theta=self.rope_theta, rope_dim=self.rope_dim)
        index_k = apply_rope(index_k, positions, theta=self.rope_theta, rope_dim=self.rope_dim)
        weights = self.weights_proj(x) * (self.n_heads**-0.5 * self.head_dim**-0.5)  # [B, N, H_I]
        return index_q, index_k, weights

    def scores(self, x: Tensor, query_slice: slice | None = None) -> Tensor:
        """Indexer scores ``[B, C, N]`` for the queries in ``query_slice`` (no causal mask;
        :func:`~sparse_attention.ops.topk.indexer_scores`, the one formula, differentiable)."""
        return indexer_scores(*self(x), query_slice=query_slice)

    def select(self, x: Tensor, top_k: int, causal: bool = True, scoring: str = "auto",
               precision: str = "float32", key_mask: Tensor | None = None) -> Selection:
        """Top-k selection ``indices [B, 1, N, K]`` shared by all attention heads
        (``scoring``, ``precision``, ``key_mask [B, N]``: as :func:`~sparse_attention.selection.dsa.dsa_select`)."""
        with torch.no_grad():
            return dsa_select(*self(x), top_k=top_k, causal=causal, scoring=scoring, precision=precision,
                              key_mask=key_mask)

"""Self-attention layer whose method (dense or any selection method) comes from config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..ops.dense import dense_attention
from ..ops.sparse_attention import sparse_attention
from ..selection.base import Selection, get_method, select
from .indexer import LightningIndexer
from .rope import apply_rope


@dataclass
class AttentionConfig:
    """Configuration of :class:`SparseSelfAttention`.

    Attributes:
        dim: model width.
        n_heads: query heads ``H``.
        n_kv_heads: key/value heads ``H_kv`` (GQA); default ``n_heads``.
        head_dim: per-head width; default ``dim // n_heads``.
        method: a registered selection method (``sparse-attention methods``); ``dense``
            runs SDPA.
        method_params: parameters of the method (e.g. ``{"top_k": 64}``).
        causal: causal self-attention.
        rope_theta: RoPE base; ``0`` disables RoPE.
        bias: bias in the q/k/v/o projections.
        indexer_heads, indexer_head_dim: shape of the lightning indexer (method ``dsa``).
        backend: sparse attention backend (``auto`` picks the fastest that fits).
    """

    dim: int
    n_heads: int
    n_kv_heads: int | None = None
    head_dim: int | None = None
    method: str = "dense"
    method_params: dict[str, Any] = field(default_factory=dict)
    causal: bool = True
    rope_theta: float = 10000.0
    bias: bool = False
    indexer_heads: int = 4
    indexer_head_dim: int = 64
    backend: str = "auto"

    def __post_init__(self) -> None:
        for name in ("dim", "n_heads", "indexer_heads", "indexer_head_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"AttentionConfig.{name} must be a positive int, got {value!r}")
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.head_dim is None:
            if self.dim % self.n_heads:
                raise ValueError(f"AttentionConfig.dim ({self.dim}) must be divisible by n_heads ({self.n_heads})"
                                 " unless head_dim is given")
            self.head_dim = self.dim // self.n_heads
        if self.n_kv_heads <= 0 or self.n_heads % self.n_kv_heads:
            raise ValueError(f"AttentionConfig.n_heads ({self.n_heads}) must be a multiple of n_kv_heads"
                             f" ({self.n_kv_heads})")
        if self.head_dim <= 0 or (self.rope_theta and self.head_dim % 2):
            raise ValueError(f"AttentionConfig.head_dim must be positive and even with RoPE, got {self.head_dim}")
        if self.rope_theta < 0:
            raise ValueError(f"AttentionConfig.rope_theta must be >= 0, got {self.rope_theta}")
        get_method(self.method).check_params(self.method_params)


class SparseSelfAttention(nn.Module):
    """Multi-head self-attention with RoPE, GQA and a configurable selection method.

    Dense and sparse variants differ only by ``config.method``; with ``method="dsa"`` the
    layer owns a :class:`LightningIndexer` whose selection all heads share.
    """

    def __init__(self, config: AttentionConfig):
        super().__init__()
        self.config = c = config
        self.q_proj = nn.Linear(c.dim, c.n_heads * c.head_dim, bias=c.bias)
        self.k_proj = nn.Linear(c.dim, c.n_kv_heads * c.head_dim, bias=c.bias)
        self.v_proj = nn.Linear(c.dim, c.n_kv_heads * c.head_dim, bias=c.bias)
        self.o_proj = nn.Linear(c.n_heads * c.head_dim, c.dim, bias=c.bias)
        self.indexer = (LightningIndexer(c.dim, c.indexer_heads, c.indexer_head_dim, rope_theta=c.rope_theta or 10000.0)
                        if c.method == "dsa" else None)

    def project(self, x: Tensor, positions: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``x [B, N, dim]`` -> ``q [B, H, N, D]``, ``k, v [B, H_kv, N, D]`` with RoPE applied."""
        c = self.config
        b, n, _ = x.shape
        positions = torch.arange(n, device=x.device) if positions is None else positions
        q = self.q_proj(x).view(b, n, c.n_heads, c.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, n, c.n_kv_heads, c.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, n, c.n_kv_heads, c.head_dim).transpose(1, 2)
        if c.rope_theta:
            q = apply_rope(q, positions, theta=c.rope_theta)
            k = apply_rope(k, positions, theta=c.rope_theta)
        return q, k, v

    def indexer_selection_params(self) -> dict[str, Any]:
        """``top_k``, ``scoring`` and ``precision`` of the layer's own indexer (method ``dsa``):
        ``method_params`` values over the method's defaults."""
        defaults = get_method("dsa").defaults()
        return {name: self.config.method_params.get(name, defaults[name]) for name in ("top_k", "scoring", "precision")}

    def select(self, x: Tensor, q: Tensor, k: Tensor) -> Selection:
        """The selection for this input (no gradient: indices are integers)."""
        c = self.config
        if c.method == "dsa" and not {"index_q", "index_k", "index_weights"} & c.method_params.keys():
            return self.indexer.select(x, causal=c.causal, **self.indexer_selection_params())
        with torch.no_grad():
            return select(q.detach(), k.detach(), c.method, causal=c.causal, **c.method_params)

    def forward(self, x: Tensor, *, return_selection: bool = False) -> Tensor | tuple[Tensor, Selection | None]:
        """``x [B, N, dim]`` -> ``[B, N, dim]`` (and the selection, None for dense)."""
        if x.dim() != 3 or x.shape[-1] != self.config.dim:
            raise ValueError(f"x must be [B, N, dim={self.config.dim}], got shape {tuple(x.shape)}")
        c = self.config
        q, k, v = self.project(x)
        selection = None
        if c.method == "dense":
            out = dense_attention(q, k, v, causal=c.causal)
        else:
            selection = self.select(x, q, k)
            out = sparse_attention(q, k, v, selection.indices, causal=c.causal, backend=c.backend)
        b, _, n, _ = out.shape
        y = self.o_proj(out.transpose(1, 2).reshape(b, n, c.n_heads * c.head_dim))
        return (y, selection) if return_selection else y

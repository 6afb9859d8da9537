"""Generated q/k/v tensors for attention-level demos and experiments."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..utils.checks import check_int


def _check_shape(batch: int, heads: int, kv_heads: int, length: int, head_dim: int) -> None:
    for name, value in (("batch", batch), ("heads", heads), ("kv_heads", kv_heads), ("length", length),
                        ("head_dim", head_dim)):
        check_int(name, value)
    if heads % kv_heads:
        raise ValueError(f"heads ({heads}) must be a multiple of kv_heads ({kv_heads})")


def gaussian_qkv(batch: int = 1, heads: int = 8, kv_heads: int = 8, length: int = 1024, head_dim: int = 64,
                 *, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """i.i.d. standard normal ``q [B, H, N, D]``, ``k, v [B, H_kv, N, D]``.

    With ``D = 64`` the logits have std 1 after scaling, so attention is close to uniform and
    no sparse method can recall much mass: a worst case, not a typical one.
    """
    _check_shape(batch, heads, kv_heads, length, head_dim)
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, length, head_dim, generator=gen)
    k = torch.randn(batch, kv_heads, length, head_dim, generator=gen)
    v = torch.randn(batch, kv_heads, length, head_dim, generator=gen)
    return q, k, v


def clustered_qkv(batch: int = 1, heads: int = 8, kv_heads: int = 8, length: int = 1024, head_dim: int = 64,
                  *, n_clusters: int = 16, spread: float = 0.3, sharpness: float = 3.0,
                  seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Queries and keys drawn around shared cluster centres, so attention is structured.

    Each token belongs to one of ``n_clusters`` random unit directions per KV head; its key
    and (for every query head of the group) its query are that direction plus Gaussian noise
    of relative size ``spread``, scaled so that the logit of a same-cluster pair is about
    ``sharpness**2`` after the ``1/sqrt(D)`` softmax scale. Values are standard normal.

    Returns ``q [B, H, N, D]``, ``k [B, H_kv, N, D]``, ``v [B, H_kv, N, D]``.
    """
    _check_shape(batch, heads, kv_heads, length, head_dim)
    if n_clusters <= 0:
        raise ValueError(f"n_clusters must be positive, got {n_clusters}")
    gen = torch.Generator().manual_seed(seed)
    groups = heads // kv_heads
    centres = torch.nn.functional.normalize(torch.randn(batch, kv_heads, n_clusters, head_dim, generator=gen), dim=-1)
    labels = torch.randint(n_clusters, (batch, kv_heads, length), generator=gen)
    base = torch.gather(centres, 2, labels[..., None].expand(-1, -1, -1, head_dim))  # [B, H_kv, N, D]
    scale = sharpness * head_dim**0.25  # logit = |q||k| cos / sqrt(D) ~ sharpness^2
    noise = spread / math.sqrt(head_dim)
    k = (base + noise * torch.randn(base.shape, generator=gen)) * scale
    q_base = base.repeat_interleave(groups, dim=1)
    q = (q_base + noise * torch.randn(q_base.shape, generator=gen)) * scale
    v = torch.randn(batch, kv_heads, length, head_dim, generator=gen)
    return q, k, v

"""Rotary position embedding (Su et al. 2021), "rotate half" layout as in LLaMA."""

from __future__ import annotations

import torch
from torch import Tensor


def apply_rope(x: Tensor, positions: Tensor, *, theta: float = 10000.0, rope_dim: int | None = None) -> Tensor:
    """Rotate the first ``rope_dim`` features of ``x`` by position.

    Args:
        x: ``[..., N, D]`` (e.g. ``[B, H, N, D]``).
        positions: ``[N]`` integer positions.
        theta: RoPE base.
        rope_dim: even number of leading features to rotate (default all ``D``); the rest
            pass through, as in DeepSeek's partial RoPE.
    """
    d = x.shape[-1]
    rope_dim = d if rope_dim is None else rope_dim
    if rope_dim % 2 or not 0 <= rope_dim <= d:
        raise ValueError(f"rope_dim must be even and within [0, {d}], got {rope_dim}")
    if rope_dim == 0:
        return x
    half = rope_dim // 2
    freqs = theta ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = positions.to(device=x.device, dtype=torch.float32)[:, None] * freqs[None, :]  # [N, half]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    rot, rest = x[..., :rope_dim], x[..., rope_dim:]
    x1, x2 = rot[..., :half], rot[..., half:]
    rotated = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    return torch.cat([rotated, rest], dim=-1)

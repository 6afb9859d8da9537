"""Input checks at the public boundary of the attention ops.

Every check raises ``TypeError`` (wrong kind of object or dtype) or ``ValueError``
(wrong shape, range or value) naming the offending argument, so that a user mistake never
surfaces as an obscure indexing error deep inside a kernel.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def check_qkv(q: Tensor, k: Tensor, v: Tensor) -> None:
    """Validate ``q [B, H, N_q, D]``, ``k [B, H_kv, N_k, D]``, ``v [B, H_kv, N_k, D_v]``."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must have rank 4 [B, H, N, D], got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k and v must share one dtype, got q={q.dtype}, k={k.dtype}, v={v.dtype}")
    if k.device != q.device or v.device != q.device:
        raise ValueError(
            f"q, k and v must be on one device, got q={q.device}, k={k.device}, v={v.device}"
        )
    if q.is_meta:
        raise ValueError("q is a meta tensor (shape only, no data): sparse attention needs real tensors (the"
                         " selection and the index checks read values)")
    b, h, n_q, d = q.shape
    if k.shape[0] != b or v.shape[0] != b:
        raise ValueError(f"batch size mismatch: q has {b}, k has {k.shape[0]}, v has {v.shape[0]}")
    if k.shape[3] != d:
        raise ValueError(f"head dim mismatch: q has {d}, k has {k.shape[3]}")
    if v.shape[1] != k.shape[1]:
        raise ValueError(f"k and v must have the same number of heads, got {k.shape[1]} and {v.shape[1]}")
    if v.shape[2] != k.shape[2]:
        raise ValueError(f"k and v must have the same length, got {k.shape[2]} and {v.shape[2]}")
    if b == 0:
        raise ValueError("empty batch: q, k and v have batch size 0")
    h_kv = k.shape[1]
    if h == 0 or h_kv == 0:
        raise ValueError(f"q and k/v need at least one head, got q heads {h}, k/v heads {h_kv}")
    if h % h_kv != 0:
        raise ValueError(f"q heads ({h}) must be a multiple of k/v heads ({h_kv}) for GQA/MQA")
    if n_q == 0 or k.shape[2] == 0:
        raise ValueError(f"empty sequence: q length {n_q}, k length {k.shape[2]}")
    if d == 0:
        raise ValueError("head dim D must be positive")


def check_indices(indices: Tensor, q: Tensor, k: Tensor, *, check_range: bool = True) -> None:
    """Validate a selection ``indices [B, H_sel, N_q, K]`` against ``q`` and ``k``.

    ``H_sel`` must be 1 (shared by all heads), ``H_kv`` (one per KV head) or ``H``
    (one per query head). Entries must lie in ``[-1, N_k - 1]``; ``-1`` is an empty slot.
    ``check_range=False`` checks only type and shape (for kernels that check the values
    while they read them).
    """
    if not isinstance(indices, Tensor):
        raise TypeError(f"indices must be a torch.Tensor, got {type(indices).__name__}")
    if indices.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise TypeError(f"indices must be an integer tensor, got dtype {indices.dtype}")
    if indices.dim() != 4:
        raise ValueError(f"indices must have rank 4 [B, H_sel, N_q, K], got shape {tuple(indices.shape)}")
    if indices.device != q.device:
        raise ValueError(f"indices must be on the device of q ({q.device}), got {indices.device}")
    b, h, n_q, _ = q.shape
    h_kv, n_k = k.shape[1], k.shape[2]
    if indices.shape[0] != b:
        raise ValueError(f"indices batch size {indices.shape[0]} does not match q batch size {b}")
    if indices.shape[1] not in (1, h_kv, h):
        raise ValueError(
            f"indices head dim H_sel={indices.shape[1]} must be 1, H_kv={h_kv} or H={h}"
        )
    if indices.shape[2] != n_q:
        raise ValueError(f"indices length {indices.shape[2]} does not match q length {n_q}")
    if indices.shape[3] == 0:
        raise ValueError("indices must have at least one slot per query (use -1 for an empty slot)")
    if check_range:
        check_index_range(indices, n_k)


def check_index_range(indices: Tensor, n_k: int) -> None:
    """Raise ValueError unless every entry of ``indices`` lies in ``[-1, n_k - 1]``."""
    if indices.numel() > 0:
        lo, hi = (int(x) for x in torch.aminmax(indices))  # one pass over N_q * K entries
        if lo < -1 or hi >= n_k:
            raise ValueError(
                f"indices out of range: found values in [{lo}, {hi}], expected -1 (empty) or 0..{n_k - 1}"
            )


def resolve_scale(scale: float | None, head_dim: int) -> float:
    """Return the softmax scale: ``1/sqrt(D)`` by default, else a finite positive float."""
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be finite and positive, got {scale}")
    return float(scale)


def causal_offset(n_q: int, n_k: int) -> int:
    """Key position of query 0 under causal masking.

    Queries are aligned to the *end* of the keys (the flash-attention convention, which makes
    decoding with a KV cache work): query ``i`` may see keys ``j <= i + (N_k - N_q)``.
    For ``N_q == N_k`` this is the usual lower-triangular mask.
    """
    return n_k - n_q


def selection_head_map(h_sel: int, h: int, h_kv: int) -> str:
    """How selection heads map onto query heads: ``'shared'``, ``'per_kv_head'`` or ``'per_head'``.

    When two readings coincide (e.g. ``H == H_kv``) the cheaper one is returned; they are
    equivalent.
    """
    if h_sel == 1:
        return "shared"
    if h_sel == h_kv:
        return "per_kv_head"
    assert h_sel == h, "check_indices guarantees H_sel in {1, H_kv, H}"
    return "per_head"


def query_key_limit(n_q: int, n_k: int, causal: bool, device) -> Tensor:
    """``[N_q]`` last key position each query may see (``N_k - 1`` when not causal)."""
    rows = torch.arange(n_q, device=device)
    if causal:
        return rows + causal_offset(n_q, n_k)
    return torch.full_like(rows, n_k - 1)

"""``attention(q, k, v, method=...)``: a selection method followed by the sparse kernel."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .ops.dense import dense_attention
from .ops.sparse_attention import sparse_attention
from .selection.base import Selection, get_method, select


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    method: str = "dense",
    *,
    causal: bool = True,
    scale: float | None = None,
    backend: str = "auto",
    return_selection: bool = False,
    **params: Any,
) -> Tensor | tuple[Tensor, Selection]:
    """Attention with the keys chosen by ``method`` (see ``sparse-attention methods``).

    Args:
        q: ``[B, H, N_q, D]``; k: ``[B, H_kv, N_k, D]``; v: ``[B, H_kv, N_k, D_v]``.
        method: registered selection method; ``"dense"`` runs SDPA directly (the fastest
            way to attend to every key), every other method runs ``sparse_attention``.
        params: the method's parameters (unknown names raise ``ValueError``).
        return_selection: also return the :class:`Selection` (computed for dense too).
    Returns:
        ``[B, H, N_q, D_v]`` (and the selection).
    """
    if method == "dense" and not return_selection:
        get_method("dense").check_params(params)
        return dense_attention(q, k, v, causal=causal, scale=scale)
    selection = select(q, k, method, causal=causal, **params)
    if method == "dense":
        out = dense_attention(q, k, v, causal=causal, scale=scale)
    else:
        out = sparse_attention(q, k, v, selection.indices, causal=causal, scale=scale, backend=backend)
    return (out, selection) if return_selection else out

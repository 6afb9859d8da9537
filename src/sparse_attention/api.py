"""``attention(q, k, v, method=...)``: a selection method followed by the sparse kernel."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .ops.dense import dense_attention
from .ops.attention import sparse_attention
from .selection.base import Selection, get_method, select
from .selection.key_mask import check_key_mask


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
    key_mask: Tensor | None = None,
    **params: Any,
) -> Tensor | tuple[Tensor, Selection]:
    """Attention with the keys chosen by ``method`` (see ``sparse-attention methods``).

    Args:
        q: ``[B, H, N_q, D]``; k: ``[B, H_kv, N_k, D]``; v: ``[B, H_kv, N_k, D_v]``.
        method: registered selection method; ``"dense"`` runs SDPA directly (the fastest
            way to attend to every key), every other method runs ``sparse_attention``.
        params: the method's parameters (unknown names raise ``ValueError``).
        return_selection: also return the :class:`Selection` (computed for dense too).
        key_mask: ``[B, N_k]`` bool or 0/1 (Hugging Face's ``attention_mask``): False / 0 marks a
            padded key, which is never selected nor attended; a query row left with no key
            gives zeros.
    Returns:
        ``[B, H, N_q, D_v]`` (and the selection).
    """
    if method == "dense" and not return_selection:
        get_method("dense").check_params(params)
        key_mask = check_key_mask(key_mask, q.shape[0], k.shape[2], q.device)
        return dense_attention(q, k, v, causal=causal, scale=scale, key_mask=key_mask)
    selection = select(q, k, method, causal=causal, key_mask=key_mask, **params)
    if method == "dense":
        key_mask = check_key_mask(key_mask, q.shape[0], k.shape[2], q.device)
        out = dense_attention(q, k, v, causal=causal, scale=scale, key_mask=key_mask)
    else:
        out = sparse_attention(q, k, v, selection.indices, causal=causal, scale=scale, backend=backend)
    return (out, selection) if return_selection else out

"""The public sparse attention op: validation, dispatch, kernel."""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from ..validation import check_index_range, check_indices, check_qkv, resolve_scale
from .cpu import sparse_attention_cpu_with_head_mean
from .implementations import choose_backend

logger = logging.getLogger(__name__)


def _checked_backend(q: Tensor, k: Tensor, v: Tensor, indices: Tensor, causal: bool, backend: str):
    """The public boundary's checks of the inputs, then the backend that runs them."""
    check_qkv(q, k, v)
    check_indices(indices, q, k, check_range=False)
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    return choose_backend(backend, q, k, v, indices, needs_grad)


def sparse_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    indices: Tensor,
    *,
    causal: bool = True,
    scale: float | None = None,
    backend: str = "auto",
    return_backend: bool = False,
) -> Tensor | tuple[Tensor, str]:
    """Softmax attention of each query over exactly the keys its selection lists.

    Args:
        q: ``[B, H, N_q, D]`` queries.
        k: ``[B, H_kv, N_k, D]`` keys; ``H % H_kv == 0`` (GQA/MQA).
        v: ``[B, H_kv, N_k, D_v]`` values.
        indices: ``[B, H_sel, N_q, K]`` integer key positions. ``H_sel`` is 1 (one selection
            shared by all heads, as in DeepSeek-V3.2), ``H_kv`` (one per KV head) or ``H``
            (one per query head). ``-1`` marks an empty slot.
        causal: when True, an index past the query's position is ignored even if listed.
            Queries are end-aligned with keys: query ``i`` sees keys ``<= i + N_k - N_q``.
        scale: softmax scale, default ``1/sqrt(D)``.
        backend: ``"auto"`` (fastest backend that supports the inputs) or a backend name;
            see :func:`sparse_attention.ops.attention.backends`.
        return_backend: also return the name of the backend that ran.

    Returns:
        ``[B, H, N_q, D_v]`` (and the backend name when ``return_backend``).

    Semantics:
        * A row with no valid key (all ``-1`` or all in the causal future) returns zeros and
          passes zero gradients, never NaN.
        * Each slot is one term of the softmax: a key listed twice in a row gets twice the
          weight (as if ``log 2`` were added to its logit). Selectors of this package never
          emit duplicates.
        * NaN in a query row propagates to that row only; NaN in a key or value reaches the
          rows that select it, as in dense attention.
    """
    chosen = _checked_backend(q, k, v, indices, causal, backend)
    scale = resolve_scale(scale, q.shape[-1])
    if not chosen.checks_index_range:
        check_index_range(indices, k.shape[2])
    logger.debug("sparse_attention: backend=%s", chosen.name)
    out = chosen.run(q, k, v, indices, causal=causal, scale=scale)
    return (out, chosen.name) if return_backend else out


def sparse_attention_with_head_mean(q: Tensor, k: Tensor, v: Tensor, indices: Tensor, *, causal: bool = True,
                                    scale: float | None = None, backend: str = "auto") -> tuple[Tensor, Tensor | None]:
    """:func:`sparse_attention` that also returns, when it comes almost free, the mean over heads
    of the attention probabilities per slot: the target of the DSA sparse-stage indexer KL.

    Args:
        as :func:`sparse_attention`; ``indices`` ``[B, 1, N_q, K]`` (one selection shared by all
        heads) for a target.
    Returns:
        ``(out, target)``: ``out`` as :func:`sparse_attention` returns it; ``target`` ``[B, N_q, K]``
        float32, not differentiable, ``sum_h P_h / H`` per slot (zero on empty and causally hidden
        slots), or ``None`` where the chosen backend does not gather it (every backend but the
        CPU kernel's few-heads path, see
        :func:`~sparse_attention.ops.attention.cpu.sparse_attention_cpu_with_head_mean`): the
        caller then computes the target itself.
    """
    chosen = _checked_backend(q, k, v, indices, causal, backend)
    if chosen.name != "cpu" or indices.shape[1] != 1:
        return sparse_attention(q, k, v, indices, causal=causal, scale=scale, backend=chosen.name), None
    logger.debug("sparse_attention_with_head_mean: backend=cpu")
    return sparse_attention_cpu_with_head_mean(q, k, v, indices, causal=causal, scale=resolve_scale(scale, q.shape[-1]))

"""The DSA sparse-stage indexer loss, fused on CPU (``indexer_kl`` of the C++ extension).

One pass per query row computes the lightning-indexer logits at the selected keys, the target
(each attention head's softmax restricted to the selected keys, averaged over heads) and the
row's ``KL(target || softmax(logits))`` together with its gradient: a row's loss depends on
that row's logits only, so the gradient is known in the forward pass. The autograd function
keeps the gradients and scales them by the incoming gradient in backward. No ``[N, K, D]``
gathered copy and no ``[N, N]`` tensor is ever formed. See ``csrc/indexer_kl_cpu.cpp``; the
PyTorch formulation it must equal is :func:`.reference.sparse_indexer_loss_reference`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..cpp.build import CppExtension

EXTENSION = CppExtension("indexer_kl", Path(__file__).with_name("csrc"))

#: input dtypes the kernel takes (converted to float32 without rounding).
EXACT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def supports(q: Tensor, k: Tensor, index_q: Tensor, index_k: Tensor, weights: Tensor, *inputs, **options) -> str | None:
    """None when :func:`indexer_kl_cpu` can run on these tensors, else why not."""
    for t in (q, k, index_q, index_k, weights):
        if t.device.type != "cpu":
            return f"runs on CPU tensors only, got {t.device.type}"
        if t.is_floating_point() and t.dtype not in EXACT_DTYPES:
            return f"computes in float32; {t.dtype} inputs would lose precision"
    return None


def supports_from_target(target: Tensor, index_q: Tensor, index_k: Tensor, weights: Tensor, *inputs,
                         **options) -> str | None:
    """None when :func:`indexer_kl_from_target_cpu` can run on these tensors, else why not."""
    return supports(target, target, index_q, index_k, weights)


class _IndexerKL(torch.autograd.Function):
    """The kernel's loss, with the gradients it computed in the forward pass. ``target`` None:
    the kernel computes it from ``q``, ``k`` and ``scale``; else ``q``, ``k``, ``scale`` are unused.
    ``grad_dtypes``: the dtypes of the caller's ``index_q``, ``index_k``, ``weights`` (before their
    float32 copies): each gradient is kept until the backward in its input's dtype, which autograd
    rounds it to anyway, so that with bf16 inputs a caller who backpropagates later holds half the
    bytes (``N x (H_I D_I + D_I + H_I)`` values). The DSA layer does not hold them at all: it takes
    the indexer's gradients when it has the loss (``utils/gradients_now.py``)."""

    @staticmethod
    def forward(ctx, q, k, index_q, index_k, weights, indices, scale, ext, grad_dtypes, target=None):
        need_grad = any(ctx.needs_input_grad[2:5])
        try:
            if target is None:
                row_kl, has_keys, diq, dik, dw = ext.indexer_kl(q, k, index_q, index_k, weights, indices, scale,
                                                                need_grad)
            else:
                row_kl, has_keys, diq, dik, dw = ext.indexer_kl_from_target(target, index_q, index_k, weights, indices,
                                                                            need_grad)
        except RuntimeError as err:  # the kernel's shape and range checks, as the public boundary reports them
            raise ValueError(str(err).splitlines()[0]) from None
        rows = int(has_keys.sum())
        ctx.grads = None
        if need_grad:
            ctx.grads = tuple((g / max(rows, 1)).to(dtype) for g, dtype in zip((diq, dik, dw), grad_dtypes))
        return row_kl.sum() / rows if rows else row_kl.sum() * 0.0

    @staticmethod
    def backward(ctx, grad):
        diq, dik, dw = (g * grad for g in ctx.grads)
        return None, None, diq, dik, dw, None, None, None, None, None


def indexer_kl_cpu(q: Tensor, k: Tensor, index_q: Tensor, index_k: Tensor, weights: Tensor, indices: Tensor, *,
                   scale: float, isa: str | None = None) -> Tensor:
    """Mean over query rows with a selected key of the sparse-stage indexer KL; differentiable in
    ``index_q``, ``index_k`` and ``weights`` (the target is a constant).

    Args:
        q: ``[B, H, N, D]`` attention queries; k: ``[B, H_kv, N_k, D]`` attention keys.
        index_q: ``[B, H_I, N, D_I]``; index_k: ``[B, N_k, D_I]``; weights: ``[B, N, H_I]``.
        indices: ``[B, N, K]`` selected key positions shared by all heads, ``-1`` = empty slot.
        scale: the attention's softmax scale.
    Returns:
        a scalar (0 with a zero gradient when no row has a key).
    """
    ext = EXTENSION.require(isa)
    q, k = q.detach().float().contiguous(), k.detach().float().contiguous()
    return _IndexerKL.apply(q, k, index_q.float().contiguous(), index_k.float().contiguous(),
                            weights.float().contiguous(), indices.long().contiguous(), float(scale), ext,
                            _dtypes(index_q, index_k, weights))


def indexer_kl_from_target_cpu(target: Tensor, index_q: Tensor, index_k: Tensor, weights: Tensor, indices: Tensor, *,
                               isa: str | None = None) -> Tensor:
    """:func:`indexer_kl_cpu` with the target given instead of computed from the attention's
    queries and keys: ``target`` ``[B, N, K]``, per slot the mean over heads of the attention
    probabilities (as :func:`~sparse_attention.ops.attention.sparse_attention_with_head_mean`
    returns it). The kernel then scores only the indexer (``H_I x D_I`` products per selected key
    instead of that plus the attention's ``H x D``)."""
    ext = EXTENSION.require(isa)
    empty = target.new_empty(0)
    return _IndexerKL.apply(empty, empty, index_q.float().contiguous(), index_k.float().contiguous(),
                            weights.float().contiguous(), indices.long().contiguous(), 1.0, ext,
                            _dtypes(index_q, index_k, weights), target.detach().float().contiguous())


def _dtypes(*tensors: Tensor) -> tuple[torch.dtype, ...]:
    return tuple(t.dtype for t in tensors)

"""The DeepSeek-V3.2 indexer training objective: KL from the main attention to the indexer.

Dense warm-up (DeepSeek-V3.2 report, Eq. 3): for each query ``t`` the target ``p[t, :]`` is
the main attention distribution summed over all heads and L1-normalised, and the loss is
``KL(p[t, :] || softmax(I[t, :]))`` over the causally visible keys. Sparse training (Eq. 4):
the same, restricted to the selected set ``S_t``: ``p`` is the sparse attention actually used
(softmax over ``S_t`` per head, summed over heads, normalised) and the indexer softmax is taken
over ``S_t`` only. The target is always computed without gradient; the caller feeds the
indexer a detached input, so this loss trains the indexer and nothing else.

The losses are averaged over queries and batch (the report sums over ``t``; a mean keeps the
learning rate independent of the sequence length).

Memory: :func:`dense_indexer_loss` (warm-up) walks query chunks and, since a row's loss depends
on that row's scores only, forms each chunk's gradient as soon as its loss is known, so it holds
``[B, C, H_I, N]`` per chunk and never ``[B, N, N]`` (its time stays O(N^2): the recipe's target
is dense). :func:`sparse_indexer_loss` (sparse stage) is O(N K) in time and memory.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..ops.dense import dense_probabilities
from ..ops.indexer_kl import INDEXER_KL, sparse_indexer_kl, sparse_indexer_kl_from_target
from ..ops.indexer_kl.reference import kl_to_indexer, sparse_attention_target
from ..ops.indexer_kl.selected_scores import CHUNK_ELEMENTS

#: Implementations of :func:`sparse_indexer_loss` (the ``indexer_kl`` op): ``auto`` (the fused CPU kernel
#: where it runs, else the reference), ``fused`` (the kernel; an error where it cannot run) and
#: ``reference`` (the chunked PyTorch formulation).
SPARSE_LOSS_IMPLEMENTATIONS = INDEXER_KL.names()

__all__ = ["SPARSE_LOSS_IMPLEMENTATIONS", "dense_attention_target", "dense_indexer_loss", "kl_to_indexer",
           "sparse_attention_target", "sparse_indexer_loss"]


@torch.no_grad()
def dense_attention_target(q: Tensor, k: Tensor, *, scale: float | None = None) -> Tensor:
    """Causal main attention summed over heads and L1-normalised.

    Args:
        q: ``[B, H, N, D]``; k: ``[B, H_kv, N, D]``.
    Returns:
        ``p [B, N, N]`` float32, rows sum to 1, zero above the diagonal.
    """
    return dense_target_rows(q, k, slice(0, q.shape[2]), scale=scale)


def query_chunks(n: int, row_elements: int, chunk: int | None = None, *, budget: int = CHUNK_ELEMENTS) -> list[slice]:
    """Slices of ``n`` query rows, each ``budget / row_elements`` rows (at least 1; or ``chunk``
    rows) long."""
    size = chunk or max(1, budget // max(1, row_elements))
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def causal_rows(rows: slice, n: int, device: torch.device | str | None = None) -> Tensor:
    """``[C, N]`` bool: query ``t`` in ``rows`` sees keys ``<= t`` (the rows of the causal mask,
    without building all ``N x N`` of it)."""
    return torch.arange(n, device=device)[None, :] <= torch.arange(rows.start, rows.stop, device=device)[:, None]


@torch.no_grad()
def dense_target_rows(q: Tensor, k: Tensor, rows: slice, *, scale: float | None = None) -> Tensor:
    """Rows ``rows`` of :func:`dense_attention_target`: ``[B, C, N]`` float32, without the rest."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    p = dense_probabilities(q, k, causal=True, scale=scale, query_slice=rows).sum(dim=1)  # [B, C, N]
    return p / p.sum(dim=-1, keepdim=True)


#: Warm-up chunk budget: elements of one ``[B, max(H, 2 H_I), C, N]`` per-chunk tensor (4 MiB in
#: float32); a chunk step holds about ten such temporaries.
WARMUP_CHUNK_ELEMENTS = 1 << 20


class _DenseIndexerKL(torch.autograd.Function):
    """Warm-up KL by query chunks; each chunk's gradient is formed with its loss (see module doc)."""

    @staticmethod
    def forward(ctx, q, k, index_q, index_k, weights, scale, chunks):
        b, _, n, _ = index_q.shape
        diq, dik, dw = torch.zeros_like(index_q), torch.zeros_like(index_k), torch.zeros_like(weights)
        total = index_q.new_zeros(())
        for rows in chunks:
            stop = rows.stop  # causal: the chunk's queries see keys [0, stop) only
            target = dense_target_rows(q[:, :, :stop], k[:, :, :stop], rows, scale=scale)  # [B, C, S]
            visible = causal_rows(rows, stop, q.device)  # [C, S]
            q_c, w_c, k_c = index_q[:, :, rows], weights[:, rows], index_k[:, :stop]  # [B, H_I, C, D_I], [B, C, H_I]
            dots = torch.einsum("bhcd,bnd->bchn", q_c, k_c)  # [B, C, H_I, S]
            relu = dots.clamp_min(0)
            scores = torch.einsum("bch,bchn->bcn", w_c, relu).masked_fill_(~visible, float("-inf"))
            log_q = torch.log_softmax(scores, dim=-1)  # [B, C, S]
            terms = target * (torch.log(target.clamp_min(1e-30)) - log_q.masked_fill(~visible, 0.0))
            total += torch.where(target > 0, terms, torch.zeros_like(terms)).sum()
            grad = log_q.exp_().sub_(target)  # dKL_row / dscores; 0 on masked keys
            dw[:, rows] = torch.einsum("bcn,bchn->bch", grad, relu)
            del relu
            d_dots = (grad[:, :, None] * w_c[..., None]).masked_fill_(dots <= 0, 0.0)  # ReLU'
            del dots
            diq[:, :, rows] = torch.einsum("bchn,bnd->bhcd", d_dots, k_c)
            dik[:, :stop] += torch.einsum("bchn,bhcd->bnd", d_dots, q_c)
        rows_total = b * n  # every causal query sees at least itself
        ctx.grads = (diq / rows_total, dik / rows_total, dw / rows_total)
        return total / rows_total

    @staticmethod
    def backward(ctx, grad):
        diq, dik, dw = (g * grad for g in ctx.grads)
        return None, None, diq, dik, dw, None, None


def dense_indexer_loss(q: Tensor, k: Tensor, index_q: Tensor, index_k: Tensor, weights: Tensor, *,
                       scale: float | None = None, query_chunk: int | None = None) -> Tensor:
    """DSA warm-up indexer loss (report Eq. 3) in O(N * chunk) memory: mean over queries of
    ``KL(p || softmax(I))`` over the causally visible keys, ``p`` = the dense attention summed over
    heads and normalised, ``I`` = the indexer scores. Differentiable in ``index_q``, ``index_k``,
    ``weights`` only; equals ``kl_to_indexer(dense_attention_target(q, k), I, causal mask)``.

    Args:
        q: ``[B, H, N, D]``; k: ``[B, H_kv, N, D]``.
        index_q: ``[B, H_I, N, D_I]``; index_k: ``[B, N, D_I]``; weights: ``[B, N, H_I]``.
        scale: attention softmax scale (default ``D ** -0.5``).
        query_chunk: queries per chunk (default: :data:`WARMUP_CHUNK_ELEMENTS` per chunk tensor).
    """
    b, h, n, _ = q.shape
    h_i = index_q.shape[1]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    chunks = query_chunks(n, b * max(h, 2 * h_i) * n, query_chunk, budget=WARMUP_CHUNK_ELEMENTS)
    return _DenseIndexerKL.apply(q.detach(), k.detach(), index_q.float(), index_k.float(), weights.float(), scale,
                                 chunks)


def sparse_indexer_loss(q: Tensor, k: Tensor, index_q: Tensor, index_k: Tensor, weights: Tensor, indices: Tensor,
                        *, scale: float | None = None, implementation: str = "auto") -> Tensor:
    """DSA sparse-stage indexer loss (report Eq. 4): mean over queries of
    ``KL(p || softmax(I))`` over each query's selected keys, ``p`` = the sparse attention over
    them (each head's softmax restricted to the selection, summed over heads, normalised),
    ``I`` = the indexer logits there. Trains ``index_q``, ``index_k``, ``weights`` only.

    Args:
        q: ``[B, H, N, D]``; k: ``[B, H_kv, N, D]`` (no gradient flows into them).
        index_q: ``[B, H_I, N, D_I]``; index_k: ``[B, N, D_I]``; weights: ``[B, N, H_I]``.
        indices: ``[B, N, K]`` selected key positions shared by all heads, ``-1`` = empty slot.
        scale: attention softmax scale (default ``D ** -0.5``).
        implementation: one of :data:`SPARSE_LOSS_IMPLEMENTATIONS`.
    Returns:
        a scalar.
    """
    INDEXER_KL.check_name(implementation)
    if indices.dim() != 3 or indices.shape[:2] != (q.shape[0], q.shape[2]):
        raise ValueError(f"indices must be [B, N, K] = [{q.shape[0]}, {q.shape[2]}, K], got {tuple(indices.shape)}")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return sparse_indexer_kl(q, k, index_q, index_k, weights, indices, scale=scale, implementation=implementation)


def sparse_indexer_loss_from_target(target: Tensor, index_q: Tensor, index_k: Tensor, weights: Tensor,
                                    indices: Tensor, *, implementation: str = "auto") -> Tensor:
    """:func:`sparse_indexer_loss` with the target given (``[B, N, K]``: the sparse attention's
    probabilities averaged over heads per slot, as the attention's forward pass gathered them), so
    that the attention scores are not computed twice. Same value and gradients."""
    return sparse_indexer_kl_from_target(target, index_q, index_k, weights, indices, implementation=implementation)

"""A loss whose parameter gradients are computed when the loss is, not in the backward pass."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor, nn


class _KnownGradients(torch.autograd.Function):
    """``value`` as a loss of ``params`` whose gradients ``grads`` are already known."""

    @staticmethod
    def forward(ctx, value, grads, *params):
        ctx.grads = grads
        return value.clone()

    @staticmethod
    def backward(ctx, grad):
        return (None, None, *(None if g is None else g * grad for g in ctx.grads))


def with_gradients_now(loss: Tensor, params: Iterable[nn.Parameter]) -> Tensor:
    """``loss`` (a scalar), differentiable in ``params`` only, with its gradients computed now.

    For a loss whose graph reaches nothing but ``params`` (the DSA indexer's KL: the indexer reads
    a detached input): its graph (the indexer's activations, the KL's gradients in them, O(N) each)
    is freed here instead of living until the backward pass reaches it; the gradients kept instead
    are the size of the parameters. A later ``backward()`` through the returned loss adds
    ``grad * d loss / d param`` to each parameter, as it would have without this call (the
    gradient is linear in the incoming ``grad``; only the rounding order of that product differs).
    A loss that does not require grad is returned as it is.

    Args:
        loss: a scalar tensor.
        params: the parameters it may depend on (those not requiring grad are skipped).
    Returns:
        a scalar equal to ``loss``.
    """
    if not loss.requires_grad:
        return loss
    if loss.dim() != 0:
        raise ValueError(f"loss: expected a scalar, got shape {tuple(loss.shape)}")
    params = [p for p in params if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return _KnownGradients.apply(loss.detach(), grads, *params)

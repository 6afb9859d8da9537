"""with_gradients_now: the same parameter gradients as the deferred backward, the graph freed at once."""

import pytest
import torch
from torch import nn

from sparse_attention import AttentionConfig, SparseSelfAttention
from sparse_attention.utils.gradients_now import with_gradients_now


def _loss(linear, x):
    return linear(x.detach()).square().mean()


def test_gradients_equal_the_deferred_backward_scaled_by_the_incoming_gradient():
    torch.manual_seed(0)
    linear, other = nn.Linear(8, 4), nn.Parameter(torch.randn(()))
    x = torch.randn(5, 8, requires_grad=True)
    (3.0 * _loss(linear, x) + other).backward()
    expected = [p.grad.clone() for p in linear.parameters()]
    linear.zero_grad()
    now = with_gradients_now(_loss(linear, x), linear.parameters())
    assert torch.equal(now, _loss(linear, x).detach())
    (3.0 * now + other).backward()
    for got, want in zip(linear.parameters(), expected):
        torch.testing.assert_close(got.grad, want)
    assert x.grad is None  # nothing reaches the detached input


def test_frozen_and_unused_parameters_and_a_loss_without_grad():
    linear, unused = nn.Linear(3, 2), nn.Parameter(torch.ones(2))
    linear.bias.requires_grad_(False)
    with_gradients_now(_loss(linear, torch.randn(4, 3)), [*linear.parameters(), unused]).backward()
    assert linear.weight.grad is not None and linear.bias.grad is None and unused.grad is None
    with torch.no_grad():
        plain = _loss(linear, torch.randn(4, 3))
    assert with_gradients_now(plain, linear.parameters()) is plain


def test_non_scalar_loss_is_a_clear_error():
    linear = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="loss: expected a scalar"):
        with_gradients_now(linear(torch.randn(4, 3)).sum(0), linear.parameters())


@pytest.mark.parametrize("mode", ["warmup", "sparse"])
def test_dsa_layer_loss_holds_only_the_indexer_parameters(mode):
    # The indexer's activations and the KL's gradients in them are not kept to the backward: the
    # loss's graph leads straight to the indexer's parameters.
    layer = SparseSelfAttention(AttentionConfig(dim=32, n_heads=4, n_kv_heads=2, method="dsa", indexer_heads=2,
                                                indexer_head_dim=16, method_params={"top_k": 6}))
    _, aux = layer.forward_with_aux(torch.randn(1, 20, 32), mode)
    leaves = {id(f.variable) for f, _ in aux.indexer_loss.grad_fn.next_functions if f is not None}
    assert leaves == {id(p) for p in layer.indexer.parameters()}

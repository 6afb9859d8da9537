"""The configurable attention layer: dense and sparse variants differ only by config."""

import pytest
import torch

from sparse_attention import AttentionConfig, SparseSelfAttention
from sparse_attention.layers import apply_rope


def test_dense_and_full_coverage_sparse_layers_agree():
    torch.manual_seed(0)
    dense = SparseSelfAttention(AttentionConfig(dim=32, n_heads=4, n_kv_heads=2))
    sparse = SparseSelfAttention(AttentionConfig(dim=32, n_heads=4, n_kv_heads=2, method="topk",
                                                 method_params={"top_k": 1000}))
    sparse.load_state_dict(dense.state_dict())
    x = torch.randn(2, 17, 32)
    assert torch.allclose(dense(x), sparse(x), atol=1e-5)


@pytest.mark.parametrize("method", ["local", "dsa", "ssa", "lsh", "routing"])
def test_sparse_layers_run_and_backpropagate(method):
    params = {"local": {"window": 4}, "dsa": {"top_k": 4}}.get(method, {})
    layer = SparseSelfAttention(AttentionConfig(dim=32, n_heads=4, n_kv_heads=1, method=method, method_params=params,
                                                indexer_heads=2, indexer_head_dim=8))
    x = torch.randn(1, 40, 32, requires_grad=True)
    y, selection = layer(x, return_selection=True)
    assert y.shape == x.shape and selection.method == method
    y.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_dsa_layer_owns_an_indexer():
    layer = SparseSelfAttention(AttentionConfig(dim=32, n_heads=4, method="dsa", method_params={"top_k": 3},
                                                indexer_heads=2, indexer_head_dim=8))
    assert layer.indexer is not None
    _, sel = layer(torch.randn(1, 10, 32), return_selection=True)
    assert sel.indices.shape == (1, 1, 10, 3)


@pytest.mark.parametrize("kwargs, match", [
    ({"dim": 30, "n_heads": 4}, "divisible"),
    ({"dim": 32, "n_heads": 4, "n_kv_heads": 3}, "multiple of n_kv_heads"),
    ({"dim": 32, "n_heads": 0}, "n_heads"),
    ({"dim": 32, "n_heads": 4, "method": "fancy"}, "unknown method"),
    ({"dim": 32, "n_heads": 4, "method": "topk", "method_params": {"k": 3}}, "no parameter 'k'"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AttentionConfig(**kwargs)


def test_rope_preserves_relative_dot_products():
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)
    def dot(i, j):
        return float(apply_rope(q, torch.tensor([i])).flatten() @ apply_rope(k, torch.tensor([j])).flatten())
    assert dot(5, 2) == pytest.approx(dot(13, 10), rel=1e-4)

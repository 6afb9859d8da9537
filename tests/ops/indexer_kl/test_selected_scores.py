"""Indexer logits at the selected keys (O(N K) memory) against the full score matrix gathered."""

import pytest
import torch

from sparse_attention.ops.topk import indexer_scores
from sparse_attention.ops.indexer_kl.selected_scores import selected_indexer_scores


def inputs(b=2, h_i=3, n_q=23, n_k=23, d_i=8, k=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h_i, n_q, d_i, generator=gen, dtype=torch.float64, requires_grad=True)
    keys = torch.randn(b, n_k, d_i, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(b, n_q, h_i, generator=gen, dtype=torch.float64, requires_grad=True)
    idx = torch.randint(0, n_k, (b, n_q, k), generator=gen)  # duplicates included
    idx = idx.masked_fill(torch.rand(idx.shape, generator=gen) < 0.25, -1)
    return q, keys, w, idx


def dense_formulation(q, keys, w, idx):
    """Today's path: every [B, N, N] score with autograd, then the selected ones."""
    full = indexer_scores(q, keys, w)  # [B, N_q, N_k]
    return full.gather(-1, idx.clamp(min=0)).masked_fill(idx < 0, 0.0)


@pytest.mark.parametrize("chunk", [None, 1, 4])
@pytest.mark.parametrize("n_q,n_k", [(23, 23), (7, 30), (1, 5)])
def test_values_and_gradients_equal_the_dense_formulation(chunk, n_q, n_k):
    q, keys, w, idx = inputs(n_q=n_q, n_k=n_k)
    got = selected_indexer_scores(q, keys, w, idx, query_chunk=chunk)
    want = dense_formulation(q, keys, w, idx)
    torch.testing.assert_close(got, want)
    upstream = torch.randn(got.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for g, h in zip(torch.autograd.grad(got, (q, keys, w), upstream), torch.autograd.grad(want, (q, keys, w), upstream)):
        torch.testing.assert_close(g, h)


def test_gradcheck():
    q, keys, w, idx = inputs(b=1, h_i=2, n_q=6, n_k=6, d_i=4, k=3)
    assert torch.autograd.gradcheck(lambda a, b, c: selected_indexer_scores(a, b, c, idx, query_chunk=2), (q, keys, w))


def test_bad_indices():
    q, keys, w, idx = inputs()
    with pytest.raises(ValueError, match="indices must be"):
        selected_indexer_scores(q, keys, w, idx[:, :-1])
    with pytest.raises(TypeError, match="int64"):
        selected_indexer_scores(q, keys, w, idx.int())

"""DeepSeek lightning indexer: scoring formula, causal top-k, module."""

import pytest
import torch
from helpers import make_qkv

from sparse_attention import LightningIndexer, dsa_select, select
from sparse_attention.selection import indexer_scores


def naive_scores(index_q, index_k, weights):
    b, h, n, _ = index_q.shape
    out = torch.zeros(b, n, index_k.shape[1])
    for t in range(n):
        for s in range(index_k.shape[1]):
            for j in range(h):
                out[:, t, s] += weights[:, t, j] * torch.relu((index_q[:, j, t] * index_k[:, s]).sum(-1))
    return out


def test_indexer_score_formula():
    gen = torch.Generator().manual_seed(0)
    index_q, index_k, w = torch.randn(2, 3, 7, 5, generator=gen), torch.randn(2, 7, 5, generator=gen), \
        torch.randn(2, 7, 3, generator=gen)
    assert torch.allclose(indexer_scores(index_q, index_k, w), naive_scores(index_q, index_k, w), atol=1e-5)
    assert torch.allclose(indexer_scores(index_q, index_k, w, slice(2, 5)),
                          naive_scores(index_q, index_k, w)[:, 2:5], atol=1e-5)


def test_dsa_select_is_causal_topk_shared_by_heads():
    gen = torch.Generator().manual_seed(1)
    index_q, index_k, w = torch.randn(1, 2, 40, 8, generator=gen), torch.randn(1, 40, 8, generator=gen), \
        torch.rand(1, 40, 2, generator=gen)
    sel = dsa_select(index_q, index_k, w, top_k=6, causal=True)
    assert sel.indices.shape == (1, 1, 40, 6)
    scores = naive_scores(index_q, index_k, w)
    for t in (0, 3, 20, 39):
        chosen = sorted(i for i in sel.indices[0, 0, t].tolist() if i >= 0)
        allowed = scores[0, t, : t + 1]
        expected = sorted(allowed.topk(min(6, t + 1)).indices.tolist())
        assert chosen == expected
    assert (sel.indices[0, 0, 2] == -1).sum() == 3  # query 2 sees 3 keys; 3 slots stay empty


def test_dsa_select_bad_shapes():
    with pytest.raises(ValueError, match="index_k"):
        dsa_select(torch.randn(1, 2, 5, 4), torch.randn(1, 5, 3), torch.randn(1, 5, 2), top_k=2)
    with pytest.raises(ValueError, match="weights"):
        dsa_select(torch.randn(1, 2, 5, 4), torch.randn(1, 5, 4), torch.randn(1, 2, 5), top_k=2)
    with pytest.raises(ValueError, match="top_k"):
        dsa_select(torch.randn(1, 2, 5, 4), torch.randn(1, 5, 4), torch.randn(1, 5, 2), top_k=0)


def test_dsa_method_with_given_indexer_tensors():
    q, k, _ = make_qkv(1, 4, 1, 30)
    indexer = LightningIndexer(dim=12, n_heads=2, head_dim=8)
    x = torch.randn(1, 30, 12)
    iq, ik, w = indexer(x)
    a = select(q, k, "dsa", top_k=5, index_q=iq, index_k=ik, index_weights=w)
    b = indexer.select(x, top_k=5)
    assert torch.equal(a.indices, b.indices)
    with pytest.raises(ValueError, match="all of index_q"):
        select(q, k, "dsa", index_q=iq)


def test_lightning_indexer_shapes_and_gradients():
    indexer = LightningIndexer(dim=16, n_heads=3, head_dim=8)
    x = torch.randn(2, 11, 16)
    iq, ik, w = indexer(x)
    assert iq.shape == (2, 3, 11, 8) and ik.shape == (2, 11, 8) and w.shape == (2, 11, 3)
    indexer.scores(x).sum().backward()
    assert all(p.grad is not None for p in indexer.parameters())
    with pytest.raises(ValueError, match="n_heads"):
        LightningIndexer(dim=16, n_heads=0)


def test_random_indexer_recovers_topk_in_expectation():
    """With MQA and D_I >> D, the random-projection indexer ranks keys almost like q.k."""
    q, k, _ = make_qkv(1, 1, 1, 64, d=8)
    sel = select(q, k, "dsa", causal=False, top_k=8, n_heads=1, head_dim=512)
    exact = select(q, k, "topk", causal=False, top_k=8)
    overlap = (sel.indices[0, 0, :, :, None] == exact.indices[0, 0, :, None, :]).any(-1).float().mean()
    assert overlap > 0.8

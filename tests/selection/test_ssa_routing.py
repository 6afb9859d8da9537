"""Clustering selectors ``ssa`` and ``routing`` and the batched k-means behind them."""

from __future__ import annotations

import pytest
import torch

from sparse_attention.ops.dense import dense_attention
from sparse_attention.ops.attention import sparse_attention
from sparse_attention.selection import select
from sparse_attention.selection._kmeans import kmeans
from sparse_attention.selection._util import make_generator, query_key_limit

METHODS = ["ssa", "routing"]


def _qkv(n_q, n_k, *, b=2, h=4, h_kv=2, d=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, n_q, d, generator=gen)
    k = torch.randn(b, h_kv, n_k, d, generator=gen)
    v = torch.randn(b, h_kv, n_k, d, generator=gen)
    return q, k, v


def _full(method, n_k):
    """Parameters under which the method must select every (causally visible) key."""
    if method == "ssa":
        return {"n_clusters": 5, "clusters_per_query": 5}
    return {"n_clusters": 3, "clusters_per_query": 3, "cluster_size": n_k}


def _rows_equal(a, b):
    """Index rows equal up to trailing -1 padding."""
    width = max(a.shape[-1], b.shape[-1])
    pad = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[-1]), value=-1)  # noqa: E731
    return torch.equal(pad(a), pad(b))


# --------------------------------------------------------------------------- k-means

@pytest.mark.parametrize("spherical", [False, True])
def test_kmeans_recovers_planted_clusters(spherical):
    gen = torch.Generator().manual_seed(1)
    centers = torch.randn(3, 4, 8, generator=gen) * 10  # [G, k, D], far apart
    truth = torch.arange(4).repeat_interleave(30)  # [L]
    x = centers[:, truth] + 0.05 * torch.randn(3, 120, 8, generator=gen)
    cent, labels = kmeans(x, 4, iters=10, generator=make_generator(0), spherical=spherical)
    assert cent.shape == (3, 4, 8) and labels.shape == (3, 120)
    for g in range(3):  # same partition as planted: a bijection between labels and truth
        pairs = set(zip(truth.tolist(), labels[g].tolist()))
        assert len(pairs) == 4 and len({p[1] for p in pairs}) == 4
    if spherical:
        assert torch.allclose(cent.norm(dim=-1), torch.ones(3, 4), atol=1e-5)
    again = kmeans(x, 4, iters=10, generator=make_generator(0), spherical=spherical)
    assert torch.equal(again[0], cent) and torch.equal(again[1], labels)


def test_kmeans_degenerate_inputs():
    x = torch.ones(2, 5, 3)  # all points equal: k-means++ weights are all zero after one pick
    cent, labels = kmeans(x, 3, iters=4, generator=make_generator(0))
    assert torch.isfinite(cent).all() and labels.min() >= 0 and labels.max() < 3
    cent, labels = kmeans(torch.randn(1, 2, 3), 4, iters=2, generator=make_generator(0))  # k > L
    assert cent.shape == (1, 4, 3) and labels.shape == (1, 2)
    with pytest.raises(ValueError, match="iters"):
        kmeans(x, 3, iters=0, generator=make_generator(0))


# --------------------------------------------------------------------------- full coverage = dense

@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("n_q,n_k,block_size", [(1, 1, None), (63, 63, None), (200, 200, None),
                                                (200, 200, 48), (50, 120, 32), (90, 40, 16)])
def test_full_coverage_equals_dense(method, causal, n_q, n_k, block_size):
    q, k, v = _qkv(n_q, n_k)
    sel = select(q, k, method, causal=causal, block_size=block_size, **_full(method, n_k))
    assert sel.indices.shape[:3] == (2, 4, n_q)  # H_sel = H
    q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
    out = sparse_attention(q, k, v, sel.indices, causal=causal)
    ref = dense_attention(q, k, v, causal=causal)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    weight = torch.randn_like(out)
    grads = torch.autograd.grad((out * weight).sum(), (q, k, v))
    ref_grads = torch.autograd.grad((ref * weight).sum(), (q, k, v))
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- causality

@pytest.mark.parametrize("method", METHODS)
def test_exactly_causal(method):
    n, s = 200, 48  # blocks start at 0, 48, 96, 144, 192
    q, k, v = _qkv(n, n, seed=3)
    params = {"block_size": s, "n_clusters": 4, "clusters_per_query": 1}
    base = select(q, k, method, causal=True, **params)
    out = sparse_attention(q, k, v, base.indices, causal=True)
    assert (base.indices >= 0).sum(-1).float().mean() < 0.8 * (n + 1) / 2  # really sparse
    gen = torch.Generator().manual_seed(7)
    for t in [0, 20, 47, 48, 95, 96, 120, 191, 192, 199]:
        q2, k2, v2 = q.clone(), k.clone(), v.clone()
        for x in (q2, k2, v2):  # the future: queries (routing fits on them), keys, values
            x[:, :, t + 1:] += 3 * torch.randn(x[:, :, t + 1:].shape, generator=gen)
        sel = select(q2, k2, method, causal=True, **params)
        assert _rows_equal(sel.indices[:, :, : t + 1], base.indices[:, :, : t + 1]), t
        out2 = sparse_attention(q2, k2, v2, sel.indices, causal=True)
        torch.testing.assert_close(out2[:, :, : t + 1], out[:, :, : t + 1], atol=1e-6, rtol=0)


@pytest.mark.parametrize("method,params", [("ssa", {}), ("routing", {"centroids": torch.randn(2, 6, 16)})])
def test_decoding_matches_full_sequence(method, params):
    """The last queries alone (a KV cache of N_k keys) select what they select in the full run.

    (Routing only with given centroids: its fit also uses the earlier queries, absent here.)
    """
    q, k, _ = _qkv(130, 130, seed=8)
    full = select(q, k, method, causal=True, block_size=32, **params)
    tail = select(q[:, :, -20:], k, method, causal=True, block_size=32, **params)
    assert _rows_equal(tail.indices, full.indices[:, :, -20:])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("causal,n_q,n_k", [(True, 200, 200), (True, 60, 150), (False, 200, 170)])
def test_indices_valid(method, causal, n_q, n_k):
    q, k, _ = _qkv(n_q, n_k, seed=5)
    sel = select(q, k, method, causal=causal, block_size=40, clusters_per_query=2)
    idx = sel.indices
    assert idx.dtype == torch.int64 and idx.shape[:3] == (2, 4, n_q) and sel.method == method
    assert sel.n_keys == n_k and sel.causal == causal
    limit = query_key_limit(n_q, n_k, causal, idx.device)
    valid = idx >= 0
    assert (idx[valid] < n_k).all()
    assert (idx <= limit[:, None]).all()  # causally invisible keys are -1, never listed
    assert valid.any(-1).all()  # every query sees at least one key (its block / a cluster)
    srt = idx.sort(-1).values
    assert not ((srt[..., 1:] == srt[..., :-1]) & (srt[..., 1:] >= 0)).any()  # no duplicates
    assert (valid.sum(-1) < n_k).any()  # sparse, not dense


# --------------------------------------------------------------------------- method specifics

@pytest.mark.parametrize("method", METHODS)
def test_deterministic_given_seed(method):
    q, k, _ = _qkv(150, 150, seed=2)
    for causal in (True, False):
        a = select(q, k, method, causal=causal, block_size=50, seed=0)
        b = select(q, k, method, causal=causal, block_size=50, seed=0)
        assert torch.equal(a.indices, b.indices) and a.info == b.info
    others = [select(q, k, method, causal=False, seed=s).indices for s in (1, 2, 3, 4)]
    assert any(not _rows_equal(o, a.indices) for o in others)


def test_ssa_clusters_partition_keys():
    q, k, _ = _qkv(40, 120, seed=4)
    for assign in ("euclidean", "dot"):
        sel = select(q, k, "ssa", causal=False, n_clusters=6, clusters_per_query=1, assign=assign)
        assert sel.info["n_clusters"] == 6
        rows = {tuple(r[r >= 0].tolist()) for r in sel.indices[0, 0]}
        seen = [key for r in rows for key in r]
        assert len(seen) == len(set(seen))  # rows are equal or disjoint: whole k-means clusters


def test_routing_balanced_and_learned_centroids():
    q, k, _ = _qkv(64, 100, seed=6)
    sel = select(q, k, "routing", causal=False, n_clusters=5, cluster_size=17)
    assert ((sel.indices >= 0).sum(-1) == 17).all()  # one cluster of exactly cluster_size keys
    cent = torch.randn(2, 3, 16)
    sel = select(q, k, "routing", causal=True, centroids=cent, block_size=32)
    # 64 queries end-aligned to 100 keys: no query ends in key block 0, so 3 blocks.
    assert sel.info["learned_centroids"] and sel.info["n_blocks"] == 3
    assert sel.info["n_clusters"] == [3, 3, 3]
    assert sel.info["cluster_size"] == [11, 22, 32]  # ceil(prefix / 3) for prefixes 32, 64, 96
    q, k, _ = _qkv(70, 70, seed=6)
    sel = select(q, k, "routing", causal=True, block_size=32)
    assert sel.info["n_clusters"] == [0, 5, 8] and sel.info["cluster_size"] == [0, 7, 8]


@pytest.mark.parametrize("method,params,exc,name", [
    ("ssa", {"n_clusters": 0}, ValueError, "n_clusters"),
    ("ssa", {"n_clusters": 2.5}, TypeError, "n_clusters"),
    ("ssa", {"clusters_per_query": 0}, ValueError, "clusters_per_query"),
    ("ssa", {"block_size": -1}, ValueError, "block_size"),
    ("ssa", {"iters": 0}, ValueError, "iters"),
    ("ssa", {"assign": "cosine"}, ValueError, "assign"),
    ("ssa", {"seed": "x"}, TypeError, "seed"),
    ("routing", {"n_clusters": -2}, ValueError, "n_clusters"),
    ("routing", {"clusters_per_query": 0}, ValueError, "clusters_per_query"),
    ("routing", {"block_size": 0}, ValueError, "block_size"),
    ("routing", {"iters": 0}, ValueError, "iters"),
    ("routing", {"cluster_size": 0}, ValueError, "cluster_size"),
    ("routing", {"centroids": torch.randn(3, 4, 16)}, ValueError, "centroids"),
    ("routing", {"centroids": torch.randn(2, 4, 8)}, ValueError, "centroids"),
    ("routing", {"centroids": [[0.0]]}, TypeError, "centroids"),
    ("routing", {"centroids": torch.randn(2, 4, 16), "n_clusters": 3}, ValueError, "centroids"),
])
def test_bad_parameters(method, params, exc, name):
    q, k, _ = _qkv(10, 10)
    with pytest.raises(exc, match=name):
        select(q, k, method, causal=True, **params)

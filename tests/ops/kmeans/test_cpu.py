"""The C++ k-means pieces (seeding, fused assignment) against their pure-PyTorch references,
and the clustering selections on the C++ path against the same selections on the PyTorch path."""

import pytest
import torch
import torch.nn.functional as F

from isa_levels import LANE_LEVELS, require_build, require_level

from sparse_attention.ops.dispatch import forced
from sparse_attention.ops.kmeans import cpu as kmeans_cpu
from sparse_attention.ops.kmeans import cluster_sums
from sparse_attention.ops.kmeans.reference import assign_reference, cluster_sums_reference, kmeanspp_picks_reference
from sparse_attention.selection import select


@pytest.fixture(autouse=True)
def _needs_the_cpu_build():
    require_build(kmeans_cpu.EXTENSION)


def _scores(x, cent, spherical):
    """``x . c`` (spherical) or ``x . c - |c|^2 / 2``: what the assignment maximises."""
    return x @ cent.transpose(-1, -2) - (0 if spherical else 0.5 * (cent * cent).sum(-1).unsqueeze(1))

SHAPES = [(1, 1, 3, 4), (3, 37, 5, 9), (2, 200, 16, 14), (1, 700, 64, 30)]  # (G, L, D, k)


def _points(g, n, d, spherical, seed):
    x = torch.randn(g, n, d, generator=torch.Generator().manual_seed(seed))
    return F.normalize(x, dim=-1) if spherical else x


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("spherical", [False, True])
def test_seeding_picks_what_the_reference_picks(shape, spherical):
    g, n, d, k = shape
    x = _points(g, n, d, spherical, seed=n)
    u = torch.rand(g, k, dtype=torch.float64, generator=torch.Generator().manual_seed(k))
    picks = kmeans_cpu.kmeanspp_picks(x, u, spherical)
    assert picks.dtype == torch.int64 and picks.shape == (g, k)
    assert torch.equal(picks, kmeanspp_picks_reference(x, u, spherical))


def test_seeding_of_coinciding_and_nan_points():
    u = torch.rand(2, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    same = torch.ones(2, 4, 3)  # every weight 0 after the first draw: uniform draws
    assert torch.equal(kmeans_cpu.kmeanspp_picks(same, u, False), kmeanspp_picks_reference(same, u, False))
    x = torch.randn(2, 9, 3, generator=torch.Generator().manual_seed(1))
    x[0, 4] = float("nan")  # a NaN point never weighs in a draw (weight 0), as in the reference
    got = kmeans_cpu.kmeanspp_picks(x, u, False)
    assert torch.equal(got, kmeanspp_picks_reference(x, u, False))


def test_seeding_draws_follow_squared_distance():
    """Two far groups: after a first point in one, the second draw lands in the other."""
    x = torch.cat([torch.zeros(1, 50, 2), torch.full((1, 50, 2), 100.0)], dim=1)
    x += 0.01 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    for seed in range(5):
        u = torch.rand(1, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        first, second = kmeans_cpu.kmeanspp_picks(x, u, False)[0].tolist()
        assert (first < 50) != (second < 50)


@pytest.mark.parametrize("g,n,d,c", [(1, 1, 3, 1), (2, 37, 5, 9), (3, 101, 16, 17), (2, 300, 64, 64),
                                     (1, 257, 64, 130), (2, 64, 7, 200)])
@pytest.mark.parametrize("spherical", [False, True])
def test_fused_assignment_equals_gemm_then_argmax(g, n, d, c, spherical):
    gen = torch.Generator().manual_seed(n + c)
    x, cent = _points(g, n, d, spherical, seed=c), torch.randn(g, c, d, generator=gen)
    bias = None if spherical else -0.5 * (cent * cent).sum(-1)
    got = kmeans_cpu.assign(x, cent, bias)
    assert got.dtype == torch.int64 and got.shape == (g, n)
    assert torch.equal(got, assign_reference(x, cent, bias))
    assert torch.equal(got, _scores(x, cent, spherical).argmax(dim=-1))


def test_fused_assignment_ties_and_nan():
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [float("nan"), 0.0]]])
    cent = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])  # centroids 1 and 2 tie
    got = kmeans_cpu.assign(x, cent)
    assert got.tolist() == [[1, 3, 0]]  # ties go to the first; a NaN row scores NaN everywhere: the first
    assert torch.equal(got, (x @ cent.transpose(1, 2)).argmax(-1))


@pytest.mark.parametrize("g, n, d, k", [(1, 1, 3, 1), (3, 50, 7, 5), (2, 300, 16, 40)])
def test_cluster_sums_equal_the_one_hot_reference(g, n, d, k):
    gen = torch.Generator().manual_seed(n)
    x, labels = torch.randn(g, n, d, generator=gen), torch.randint(0, k, (g, n), generator=gen)
    sums, counts = cluster_sums(x, labels, k, implementation="cpu")
    want_sums, want_counts = cluster_sums_reference(x, labels, k)
    torch.testing.assert_close(sums, want_sums, rtol=1e-5, atol=1e-5)
    assert torch.equal(counts, want_counts) and counts.dtype == x.dtype


@pytest.mark.parametrize("isa", LANE_LEVELS)
def test_every_isa_build(isa):
    require_level(kmeans_cpu.EXTENSION, isa)
    x = torch.randn(2, 150, 24, generator=torch.Generator().manual_seed(3))
    cent = torch.randn(2, 70, 24, generator=torch.Generator().manual_seed(4))
    bias = -0.5 * (cent * cent).sum(-1)
    assert torch.equal(kmeans_cpu.assign(x, cent, bias, isa=isa), assign_reference(x, cent, bias))
    u = torch.rand(2, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    assert torch.equal(kmeans_cpu.kmeanspp_picks(x, u, False, isa=isa), kmeanspp_picks_reference(x, u, False))


@pytest.mark.parametrize("method", ["ssa", "routing"])
@pytest.mark.parametrize("causal", [True, False])
def test_selections_equal_the_pytorch_path(method, causal):
    """The C++ seeding, assignment and member rows select exactly what the references select."""
    gen = torch.Generator().manual_seed(6)
    q, k = torch.randn(2, 4, 300, 16, generator=gen), torch.randn(2, 2, 300, 16, generator=gen)
    fast = select(q, k, method, causal=causal, block_size=64, clusters_per_query=2)
    with forced(kmeans_seed="reference", kmeans_assign="reference", cluster_rows="reference",
                compact_rows="reference"):
        slow = select(q, k, method, causal=causal, block_size=64, clusters_per_query=2)
    assert torch.equal(fast.indices, slow.indices) and fast.info == slow.info

"""Row compaction: the CPU bitmap kernels against the sort-based reference, for all three entry
points (candidate lists, chosen clusters' members, LSH runs), and on every ISA build."""

import pytest
import torch
from isa_levels import PORTABLE_LEVELS, require_build, require_level

from sparse_attention.ops.compact import cluster_rows, compact_rows, cpu, lsh_rows
from sparse_attention.ops.compact.reference import cluster_rows_reference, compact_rows_reference, lsh_rows_reference


@pytest.fixture(autouse=True)
def _needs_the_cpu_build():
    require_build(cpu.EXTENSION)


SHAPES = [  # (candidate shape, N_k): odd widths, one candidate, keys across several bitmap words
    ((1, 4, 37, 11), 20),
    ((2, 3, 13, 1), 9),
    ((1, 2, 50, 300), 1000),
    ((3, 29, 64), 200),
    ((2, 5, 0), 8),  # no candidates at all: one -1 slot per row
]


@pytest.mark.parametrize("shape, n_keys", SHAPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("key_range", [None, (0, 3), (5, 70), (63, 129), (7, 7)])
def test_same_rows_as_the_sorting_reference(shape, n_keys, causal, key_range):
    gen = torch.Generator().manual_seed(shape[-1])
    cand = torch.randint(-3, n_keys + 3, shape, generator=gen)  # padding, duplicates, out-of-range keys
    limit = torch.arange(shape[-2]) - 2 if causal else None  # the first rows see no key at all
    got = compact_rows(cand, n_keys, limit, key_range, implementation="cpu")
    assert torch.equal(got, compact_rows_reference(cand, n_keys, limit, key_range))


@pytest.mark.parametrize("implementation", ["cpu", "reference"])
def test_a_key_range_alone_fills_rows_up_to_their_limit(implementation):
    got = compact_rows(torch.empty(1, 4, 0, dtype=torch.long), 100, torch.tensor([65, 66, 70, 200]), (64, 68),
                       implementation=implementation)
    assert got.tolist() == [[[64, 65, -1, -1], [64, 65, 66, -1], [64, 65, 66, 67], [64, 65, 66, 67]]]


def test_a_negative_key_range_is_a_clear_error():
    with pytest.raises(ValueError, match="key_range"):
        compact_rows(torch.zeros(1, 2, 3, dtype=torch.long), 10, None, (-1, 4))


@pytest.mark.parametrize("implementation", ["cpu", "reference"])
def test_rows_are_ascending_unique_and_causal(implementation):
    cand = torch.tensor([[[5, 1, 5, -1, 3, 9], [0, 0, 0, 0, 0, 0], [-1, -1, -1, -1, -1, -1]]])
    got = compact_rows(cand, 10, torch.tensor([4, 9, 9]), implementation=implementation)
    assert got.tolist() == [[[1, 3], [0, -1], [-1, -1]]]


def test_int32_candidates_give_int64_rows():
    cand = torch.tensor([[3, 1, 3]], dtype=torch.int32)
    assert compact_rows(cand, 4).dtype == torch.int64


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("key_range", [None, (0, 5), (40, 90)])
@pytest.mark.parametrize("g,c,m,q,picks", [(1, 1, 1, 1, 1), (2, 5, 7, 24, 2), (3, 9, 40, 30, 4), (2, 4, 3, 10, 6)])
def test_cluster_rows_equal_the_reference(causal, key_range, g, c, m, q, picks):
    gen = torch.Generator().manual_seed(g * 100 + c * 10 + m)
    n_keys = 100
    members = torch.randint(-1, n_keys, (g, c, m), generator=gen)  # -1 padding and overlapping clusters
    chosen = torch.randn(g, q, c, generator=gen).topk(min(picks, c), dim=-1).indices  # [g, q, c']
    limit = torch.arange(q // 2 if q > 1 else 1) * 3 if causal else None  # rows use limit[row % len(limit)]
    if limit is not None and q % limit.numel():
        limit = torch.arange(q) * 3
    got = cluster_rows(members, chosen, n_keys, limit, key_range, implementation="cpu")
    assert torch.equal(got, cluster_rows_reference(members, chosen, n_keys, limit, key_range))


def _lsh_runs(t, gk, n_k, m, seed):
    """Random buckets of T rounds -> the sorted orders and each row's run, as selection.lsh builds them."""
    gen = torch.Generator().manual_seed(seed)
    kb, qb = torch.randint(0, 5, (t, gk, n_k), generator=gen), torch.randint(0, 5, (t, gk, m), generator=gen)
    pos = (torch.arange(m) % n_k) - 1  # includes -1: a row before the first key
    sorted_ck, order = (kb * n_k + torch.arange(n_k)).sort(dim=-1, stable=True)
    base = qb * n_k
    lo, hi = torch.searchsorted(sorted_ck, base), torch.searchsorted(sorted_ck, base + n_k)
    at = torch.searchsorted(sorted_ck, base + pos, right=True)
    return order, lo, at, hi, pos


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("include_self", [False, True])
@pytest.mark.parametrize("t, gk, n_k, m, window", [(1, 1, 1, 1, 2), (2, 3, 40, 80, 4), (4, 2, 300, 300, 16)])
def test_lsh_rows_equal_the_reference(causal, include_self, t, gk, n_k, m, window):
    runs = _lsh_runs(t, gk, n_k, m, seed=n_k)
    got = lsh_rows(*runs, window, causal, include_self, n_k, implementation="cpu")
    assert torch.equal(got, lsh_rows_reference(*runs, window, causal, include_self, n_k))


@pytest.mark.parametrize("isa", PORTABLE_LEVELS)
def test_every_isa_build(isa):
    require_level(cpu.EXTENSION, isa)
    cand = torch.randint(-1, 70, (2, 33, 40), generator=torch.Generator().manual_seed(1))
    limit = torch.arange(33) + 30
    for key_range in (None, (10, 50)):
        got = cpu.compact_rows(cand, 70, limit, key_range, isa=isa)
        assert torch.equal(got, compact_rows_reference(cand, 70, limit, key_range))
    runs = _lsh_runs(2, 2, 60, 90, seed=3)
    assert torch.equal(cpu.lsh_rows(*runs, 4, True, True, 60, isa=isa), lsh_rows_reference(*runs, 4, True, True, 60))

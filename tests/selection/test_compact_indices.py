"""The CPU bitmap compaction of candidate lists against the sort-based reference."""

import pytest
import torch

from sparse_attention.ops.kernels import compact_cpu, cpu
from sparse_attention.selection._util import compact_indices, compact_indices_reference

pytestmark = pytest.mark.skipif(cpu.load_error() is not None, reason=f"CPU extension unavailable: {cpu.load_error()}")

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
    got = compact_indices(cand, n_keys, limit, key_range)
    assert torch.equal(got, compact_indices_reference(cand, n_keys, limit, key_range))


def test_a_key_range_alone_fills_rows_up_to_their_limit():
    got = compact_indices(torch.empty(1, 4, 0, dtype=torch.long), 100, torch.tensor([65, 66, 70, 200]), (64, 68))
    assert got.tolist() == [[[64, 65, -1, -1], [64, 65, 66, -1], [64, 65, 66, 67], [64, 65, 66, 67]]]


def test_a_negative_key_range_is_a_clear_error():
    with pytest.raises(ValueError, match="key_range"):
        compact_indices(torch.zeros(1, 2, 3, dtype=torch.long), 10, None, (-1, 4))


def test_rows_are_ascending_unique_and_causal():
    cand = torch.tensor([[[5, 1, 5, -1, 3, 9], [0, 0, 0, 0, 0, 0], [-1, -1, -1, -1, -1, -1]]])
    got = compact_indices(cand, 10, torch.tensor([4, 9, 9]))
    assert got.tolist() == [[[1, 3], [0, -1], [-1, -1]]]


@pytest.mark.parametrize("isa", cpu.ISA_LEVELS)
def test_every_isa_build(isa):
    if cpu.isa_unavailable_reason(isa) is not None or cpu.load_error(isa) is not None:
        pytest.skip(f"{isa} build cannot run here")
    cand = torch.randint(-1, 70, (2, 33, 40), generator=torch.Generator().manual_seed(1))
    limit = torch.arange(33) + 30
    for key_range in (None, (10, 50)):
        got = compact_cpu.compact_rows(cand, 70, limit, key_range, isa=isa)
        assert torch.equal(got, compact_indices_reference(cand, 70, limit, key_range))


def test_int32_candidates_give_int64_rows():
    cand = torch.tensor([[3, 1, 3]], dtype=torch.int32)
    assert compact_indices(cand, 4).dtype == torch.int64


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("key_range", [None, (0, 5), (40, 90)])
@pytest.mark.parametrize("g,c,m,q,picks", [(1, 1, 1, 1, 1), (2, 5, 7, 24, 2), (3, 9, 40, 30, 4), (2, 4, 3, 10, 6)])
def test_cluster_rows_equal_gathered_members_compacted(causal, key_range, g, c, m, q, picks):
    from sparse_attention.selection._clustered import route_to_members

    gen = torch.Generator().manual_seed(g * 100 + c * 10 + m)
    n_keys = 100
    members = torch.randint(-1, n_keys, (g, c, m), generator=gen)  # -1 padding and overlapping clusters
    scores = torch.randn(1, g, 1, q, c, generator=gen)  # [B, H_kv, G, S, C]
    chosen = scores.topk(min(picks, c), dim=-1).indices  # [1, g, 1, q, c']
    limit = torch.arange(q) * 3 if causal else None
    got = compact_cpu.cluster_rows(members, chosen.reshape(g, q, -1), n_keys, limit, key_range)
    cand = route_to_members(scores, members.unsqueeze(0), picks)  # [1, g, q, c' * m]
    want = compact_indices_reference(cand, n_keys, limit, key_range)
    assert torch.equal(got, want.reshape(g, q, -1))

"""The fast CPU backend against the reference: outputs and gradients of q, k, v."""

import pytest
import torch
from helpers import make_qkv
from isa_levels import require_build
from kernel_checks import compare, random_indices

from sparse_attention import sparse_attention
from sparse_attention.ops.attention import cpu


@pytest.fixture(autouse=True)
def _needs_the_cpu_build():
    require_build(cpu.EXTENSION)


# (600, 600): more slots per row than a backward key range (512) and several 128-token blocks, at a
# third of the float64 reference's cost of (1000, 1000).
@pytest.mark.parametrize("n, slots", [(1, 1), (63, 1), (63, 17), (63, 63), (1000, 40), (600, 600)])
@pytest.mark.parametrize("layout", ["shared", "per_kv_head", "per_head"])
@pytest.mark.parametrize("causal", [True, False])
def test_matches_reference_fp32(n, slots, layout, causal):
    b, h, h_kv = 1, 4, 2
    q, k, v = make_qkv(b, h, h_kv, n, d=32, dtype=torch.float64)
    h_sel = {"shared": 1, "per_kv_head": h_kv, "per_head": h}[layout]
    idx = random_indices(b, h_sel, n, n, slots, seed=n + slots)
    compare(q, k, v, idx, causal, torch.float32)


@pytest.mark.parametrize("h, h_kv, d", [(16, 1, 64), (16, 4, 64), (6, 6, 40), (3, 1, 128), (8, 1, 32), (12, 1, 48),
                                        (32, 2, 128), (32, 1, 64)])
def test_head_layouts_and_dims(h, h_kv, d):
    q, k, v = make_qkv(2, h, h_kv, 70, d=d, dtype=torch.float64)
    compare(q, k, v, random_indices(2, 1, 70, 70, 33), True, torch.float32)


@pytest.mark.parametrize("h, h_kv, d, d_v", [(5, 5, 16, 48), (10, 2, 128, 64), (8, 1, 48, 80), (6, 3, 64, 16)])
def test_few_heads_per_group_with_value_width_apart(h, h_kv, d, d_v):
    # Groups of up to 8 heads take the per-(head, key) score kernel (lanes_rows.h): every head
    # count 1..5 and 8, D from 16 to 128, D_v != D, and 37 slots (two full blocks of 16 keys
    # and a partial one).
    q, k, _ = make_qkv(1, h, h_kv, 90, d=d, dtype=torch.float64)
    v = torch.randn(1, h_kv, 90, d_v, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for h_sel in (1, h_kv, h):
        compare(q, k, v, random_indices(1, h_sel, 90, 90, 37, seed=h_sel), True, torch.float32)


def test_long_sequence_mqa():
    q, k, v = make_qkv(1, 8, 1, 4096, d=64, dtype=torch.float64)
    compare(q, k, v, random_indices(1, 1, 4096, 4096, 64, empty_fraction=0.05), True, torch.float32)


@pytest.mark.parametrize("h, h_kv, layout", [(16, 1, "shared"), (4, 2, "shared"), (4, 2, "per_head")])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("ascending", [False, True])
def test_keys_walked_in_several_ranges(h, h_kv, layout, causal, ascending):
    # fp32 with D = D_v = 64: a forward key range holds 4096 keys (2 MiB of K and V), so 20000
    # keys are 5 ranges merged per token by the online softmax, and blocks are 128 tokens wide:
    # the 150 queries (the last 150 positions) are one full and one partial block. The backward
    # of groups of up to 8 heads (4:2 here) walks ranges of one L2 (K, V, dK and dV rows; at most
    # 2048 keys).
    # Ascending rows (with -1 slots first) take the grouping's sorted shortcut.
    q, k, v = make_qkv(1, h, h_kv, 150, n_k=20000, d=64, dtype=torch.float64)
    h_sel = {"shared": 1, "per_head": h}[layout]
    idx = random_indices(1, h_sel, 150, 20000, 300, seed=5, empty_fraction=0.1)
    idx[..., :5] = torch.tensor([0, 4095, 4096, 16384, 19999])  # range edges
    if ascending:
        idx = idx.sort(dim=-1).values
    compare(q, k, v, idx, causal, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kv_groups_sharing_one_selection(dtype):
    # One selection for 2 KV groups of 4 heads (DSA's layout): each 128-token block's keys are
    # grouped by range once and run for both groups, when there are enough blocks for the threads
    # (9 blocks of 1100 tokens >= 4 per thread at 2 threads). D = 64: backward ranges of one L2
    # (at most 2 MiB of K, V, dK and dV: 2048 keys), so the 5000 keys span at least 3 of them; a
    # tenth of the slots empty, row 7 without keys.
    q, k, v = make_qkv(1, 8, 2, 1100, n_k=5000, d=64, dtype=torch.float64)
    idx = random_indices(1, 1, 1100, 5000, 200, seed=11, empty_fraction=0.1)
    idx[0, 0, 7] = -1
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        compare(q, k, v, idx, True, dtype)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("h, h_kv", [(8, 2), (16, 1)])
def test_bfloat16(h, h_kv):
    q, k, v = make_qkv(1, h, h_kv, 200, d=64, dtype=torch.float64)
    compare(q, k, v, random_indices(1, h_kv, 200, 200, 50), True, torch.bfloat16)


def test_empty_rows_and_duplicates():
    q, k, v = make_qkv(1, 4, 1, 30, d=16, dtype=torch.float64)
    idx = random_indices(1, 1, 30, 30, 12, unique=False, empty_fraction=0.5)
    idx[0, 0, 7] = -1  # a row without keys
    idx[0, 0, 3] = torch.tensor([20, 25] * 6)  # only future keys: empty under causal
    compare(q, k, v, idx, True, torch.float32)
    out = sparse_attention(q.float(), k.float(), v.float(), idx, backend="cpu")
    assert torch.count_nonzero(out[0, :, [3, 7]]) == 0


def test_non_contiguous_inputs():
    q, k, v = make_qkv(1, 4, 2, 50, d=16, dtype=torch.float64)
    qt = q.transpose(1, 2).contiguous().transpose(1, 2)
    compare(qt, k, v, random_indices(1, 4, 50, 50, 9), True, torch.float32)


def test_nan_in_query_row_stays_in_that_row():
    q, k, v = make_qkv(1, 2, 1, 20, d=16)
    q[0, 1, 5, 0] = float("nan")
    out = sparse_attention(q, k, v, random_indices(1, 1, 20, 20, 8, empty_fraction=0.0), causal=False, backend="cpu")
    assert torch.isnan(out[0, 1, 5]).all()
    out[0, 1, 5] = 0
    assert torch.isfinite(out).all()


def test_auto_prefers_cpu_backend_for_cpu_tensors():
    q, k, v = make_qkv(1, 2, 1, 10)
    _, backend = sparse_attention(q, k, v, random_indices(1, 1, 10, 10, 4), return_backend=True)
    assert backend == "cpu"
    _, backend = sparse_attention(q.double(), k.double(), v.double(), random_indices(1, 1, 10, 10, 4),
                                  return_backend=True)
    assert backend == "reference"  # float64 is not supported by the fast kernel
    with pytest.raises(ValueError, match="backend='cpu' cannot run these inputs: dtype torch.float64"):
        sparse_attention(q.double(), k.double(), v.double(), random_indices(1, 1, 10, 10, 4), backend="cpu")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_large_key_matrix_uses_the_huge_page_copy(dtype):
    # K and V of >= 1 MiB are copied onto 2 MiB pages before the gathers (bf16: 8192 x 256 x 2 B;
    # on AMX machines that case also walks its keys in 8 ranges of 1024).
    n_k, d = (16384, 64) if dtype == torch.float32 else (8192, 256)
    q, k, v = make_qkv(1, 4, 1, 5, n_k=n_k, d=d, dtype=torch.float64)
    assert k.numel() * torch.empty(0, dtype=dtype).element_size() >= 4 << 20
    compare(q, k, v, random_indices(1, 1, 5, n_k, 300, empty_fraction=0.1), False, dtype)


@pytest.mark.parametrize("n_k, saved_dtype", [(40, torch.int16), (2**15, torch.int16), (2**15 + 1, torch.int32)])
def test_selection_is_saved_in_the_narrowest_type_for_the_backward(n_k, saved_dtype):
    # int16 holds every key position (and -1) up to 2**15 keys; the backward reads it as saved.
    q, _, _ = make_qkv(1, 4, 2, 3, d=16, dtype=torch.float64)
    _, k, v = make_qkv(1, 4, 2, n_k, d=16, dtype=torch.float64)
    idx = random_indices(1, 2, 3, n_k, 9)
    idx[0, 0, 0, 0] = n_k - 1  # the last key position
    q, k, v = (t.float().requires_grad_() for t in (q, k, v))
    saved = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = sparse_attention(q, k, v, idx, causal=False, backend="cpu")
    assert [t.dtype for t in saved if t.shape == idx.shape] == [saved_dtype]
    out.sum().backward()
    compare(q.detach().double(), k.detach().double(), v.detach().double(), idx, False, torch.float32)

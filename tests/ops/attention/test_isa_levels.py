"""Every instruction-set build of the attention kernel against the float64 reference, on one machine.

The session's own build (``native`` unless ``SPARSE_ATTENTION_CPU_ISA`` says otherwise) is
tested in depth by test_cpu.py and test_cpu_amx.py; here the other levels run a smaller
shape set that still reaches each of their code paths: the lane kernels (groups of 9-16 heads),
the per-(head, key) score kernel (1-8 heads), the portable loops (D not a multiple of 16, and
everything in the ``generic`` build), keys walked in several ranges, bf16 storage, rows without
keys and out-of-range indices. (The other ops test their builds in their own rooms.) A level the
CPU cannot run is skipped with the reason (``avx512`` on an AVX2-only CPU).
"""

import pytest
import torch
from helpers import make_qkv
from isa_levels import OTHER_LEVELS, require_level
from kernel_checks import compare, random_indices

from sparse_attention.ops.attention import cpu
from sparse_attention.ops.cpp import build


@pytest.fixture(params=OTHER_LEVELS)
def isa(request):
    return require_level(cpu.EXTENSION, request.param)


def test_build_reports_its_level(isa):
    info = cpu.build_info(isa)
    assert info["isa_level"] == isa and "load_error" not in info
    features = info["compiled_features"]
    expected_lanes = {"avx512": "lanes:avx512", "avx2": "lanes:avx2", "generic": "lanes:none"}[isa]
    assert expected_lanes in features
    assert ("avx512f" in features) == (isa == "avx512") and ("avx2" in features) == (isa != "generic")
    assert "amx_bf16" not in features and not info["amx_attention"]  # AMX only in native builds


@pytest.mark.parametrize("h, h_kv, d, layout", [(16, 1, 64, "shared"), (16, 4, 64, "per_kv_head"),
                                                (4, 2, 32, "per_head"), (6, 6, 40, "shared"),
                                                (3, 1, 128, "shared"), (12, 1, 48, "shared")])
@pytest.mark.parametrize("n, slots", [(1, 1), (63, 17), (200, 200)])
def test_fp32_outputs_and_gradients(isa, h, h_kv, d, layout, n, slots):
    q, k, v = make_qkv(1, h, h_kv, n, d=d, dtype=torch.float64)
    h_sel = {"shared": 1, "per_kv_head": h_kv, "per_head": h}[layout]
    idx = random_indices(1, h_sel, n, n, slots, seed=n + h)
    for causal in (True, False):
        compare(q, k, v, idx, causal, torch.float32, isa=isa)


@pytest.mark.parametrize("h, h_kv, layout", [(16, 1, "shared"), (4, 2, "per_head")])
@pytest.mark.parametrize("ascending", [False, True])
def test_keys_walked_in_several_ranges(isa, h, h_kv, layout, ascending):
    # 20000 fp32 keys of D = D_v = 64 span 5 key ranges of 4096 (see test_cpu.py).
    q, k, v = make_qkv(1, h, h_kv, 150, n_k=20000, d=64, dtype=torch.float64)
    idx = random_indices(1, {"shared": 1, "per_head": h}[layout], 150, 20000, 300, seed=5, empty_fraction=0.1)
    idx[..., :5] = torch.tensor([0, 4095, 4096, 16384, 19999])
    if ascending:
        idx = idx.sort(dim=-1).values
    compare(q, k, v, idx, True, torch.float32, isa=isa)


def test_kv_groups_sharing_one_selection(isa):
    # The backward that stages a block's keys once for both KV groups (see test_cpu.py).
    q, k, v = make_qkv(1, 8, 2, 1100, n_k=5000, d=64, dtype=torch.float64)
    idx = random_indices(1, 1, 1100, 5000, 200, seed=11, empty_fraction=0.1)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        compare(q, k, v, idx, True, torch.float32, isa=isa)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("h, h_kv", [(16, 1), (8, 2)])
def test_bfloat16(isa, h, h_kv):
    q, k, v = make_qkv(1, h, h_kv, 200, d=64, dtype=torch.float64)
    compare(q, k, v, random_indices(1, h_kv, 200, 200, 50), True, torch.bfloat16, isa=isa)


def test_rows_without_keys_and_duplicates(isa):
    q, k, v = make_qkv(1, 16, 1, 40, d=64, dtype=torch.float64)
    idx = random_indices(1, 1, 40, 40, 12, unique=False, empty_fraction=0.5)
    idx[0, 0, 7] = -1
    idx[0, 0, 3] = torch.tensor([30, 35] * 6)  # only future keys: empty under causal
    compare(q, k, v, idx, True, torch.float32, isa=isa)
    out = cpu.sparse_attention_cpu(q.float(), k.float(), v.float(), idx, causal=True, scale=0.125, isa=isa)
    assert torch.count_nonzero(out[0, :, [3, 7]]) == 0


@pytest.mark.parametrize("slot", [0, 5, 8, 11])
def test_out_of_range_index_raises(isa, slot):
    q, k, v = make_qkv(1, 16, 1, 20, d=64, dtype=torch.float32)
    idx = random_indices(1, 1, 20, 20, 12)
    idx[0, 0, 9, slot] = 20
    with pytest.raises(ValueError, match="indices out of range"):
        cpu.sparse_attention_cpu(q, k, v, idx, causal=True, scale=0.125, isa=isa)


def test_nan_stays_in_its_head(isa):
    q, k, v = make_qkv(1, 16, 1, 30, d=64, dtype=torch.float32)
    q[0, 5, 10, 0] = float("nan")
    idx = random_indices(1, 1, 30, 30, 10, empty_fraction=0.0)
    out = cpu.sparse_attention_cpu(q, k, v, idx, causal=False, scale=0.125, isa=isa)
    assert torch.isnan(out[0, 5, 10]).all()
    out[0, 5, 10] = 0
    assert torch.isfinite(out).all()


def test_unknown_level_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(build.ISA_ENV, "avx9000")
    with pytest.raises(ValueError, match="SPARSE_ATTENTION_CPU_ISA"):
        build.isa_level()
    with pytest.raises(ValueError, match="isa must be one of"):
        build.isa_unavailable_reason("sse9")

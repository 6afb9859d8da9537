"""The bf16 forward on AMX tiles (csrc/amx_attention.h) against the reference and the fp32-FMA path."""

import pytest
import torch
from helpers import assert_close, make_qkv
from isa_levels import require_build
from kernel_checks import TOLERANCE, compare, random_indices

from sparse_attention.ops.attention import cpu


@pytest.fixture(autouse=True)
def _needs_amx():
    require_build(cpu.EXTENSION)
    if not cpu.amx_attention_available():
        pytest.skip("no AMX-BF16 tile unit on this CPU (or the OS refused it)")


BF16 = torch.bfloat16


def forward_both(q, k, v, idx, causal):
    """(AMX output, lse), (fp32-FMA output, lse) of the extension for bf16 inputs."""
    q, k, v = (t.to(BF16).contiguous() for t in (q, k, v))
    scale = q.shape[-1] ** -0.5
    amx = cpu.EXTENSION.module().forward(q, k, v, idx, causal, scale)
    fma = cpu.EXTENSION.module().forward(q, k, v, idx, causal, scale, allow_amx=False)
    return amx, fma


@pytest.mark.parametrize("n, slots", [(1, 1), (63, 1), (63, 17), (63, 63), (1000, 40), (1000, 1000)])
@pytest.mark.parametrize("layout", ["shared", "per_kv_head", "per_head"])
@pytest.mark.parametrize("causal", [True, False])
def test_outputs_and_gradients_match_reference(n, slots, layout, causal):
    b, h, h_kv = 1, 4, 2
    q, k, v = make_qkv(b, h, h_kv, n, d=64, dtype=torch.float64)
    h_sel = {"shared": 1, "per_kv_head": h_kv, "per_head": h}[layout]
    compare(q, k, v, random_indices(b, h_sel, n, n, slots, seed=n + slots), causal, BF16)


@pytest.mark.parametrize("h, h_kv, d", [(16, 1, 64), (16, 4, 32), (8, 1, 128), (3, 3, 96), (32, 2, 64)])
def test_head_layouts_and_dims(h, h_kv, d):
    q, k, v = make_qkv(2, h, h_kv, 90, d=d, dtype=torch.float64)
    compare(q, k, v, random_indices(2, 1, 90, 90, 37), True, BF16)


@pytest.mark.parametrize("slots", [1, 31, 32, 33, 64, 100])
def test_amx_path_agrees_with_the_fma_path(slots):
    # Both read the same bf16 inputs; they differ only in P being rounded to bf16 for P V.
    q, k, v = make_qkv(1, 16, 1, 300, d=64, dtype=torch.float64)
    idx = random_indices(1, 1, 300, 300, slots, seed=slots, empty_fraction=0.1)
    (o_amx, lse_amx), (o_fma, lse_fma) = forward_both(q, k, v, idx, True)
    assert torch.equal(torch.isneginf(lse_amx), torch.isneginf(lse_fma))  # rows without keys
    finite = torch.isfinite(lse_fma)
    torch.testing.assert_close(lse_amx[finite], lse_fma[finite], rtol=0, atol=1e-4)
    assert_close(o_amx.float(), o_fma.float(), TOLERANCE[BF16])
    if slots >= 32:
        assert not torch.equal(o_amx, o_fma)  # the AMX path did run


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("ascending", [False, True])
def test_keys_walked_in_several_ranges(causal, ascending):
    # With D = D_v = 64 a key range holds 4096 keys (1 MiB of bf16 K and V): 10000 keys are 3
    # ranges, merged per token by the online softmax, and blocks are 128 tokens wide: the 150
    # queries (the last 150 positions) are one full and one partial block. Ascending rows (with
    # -1 slots first) take the grouping's sorted shortcut.
    q, k, v = make_qkv(1, 16, 1, 150, n_k=10000, d=64, dtype=torch.float64)
    idx = random_indices(1, 1, 150, 10000, 700, seed=3, empty_fraction=0.1)
    idx[0, 0, :, :5] = torch.tensor([0, 4095, 4096, 8191, 9999])  # range edges
    if ascending:
        idx = idx.sort(dim=-1).values
    compare(q, k, v, idx, causal, BF16)
    (o_amx, lse_amx), (o_fma, lse_fma) = forward_both(q, k, v, idx, causal)
    torch.testing.assert_close(lse_amx, lse_fma, rtol=0, atol=1e-4)
    assert_close(o_amx.float(), o_fma.float(), TOLERANCE[BF16])


def test_rows_without_keys_are_zero_with_neg_inf_lse():
    q, k, v = make_qkv(1, 8, 1, 40, d=64, dtype=torch.float64)
    idx = random_indices(1, 1, 40, 40, 10, empty_fraction=0.0)
    idx[0, 0, 5] = -1
    idx[0, 0, 6] = 39  # only a future key: empty under causal
    (out, lse), _ = forward_both(q, k, v, idx, True)
    assert torch.count_nonzero(out[0, :, [5, 6]]) == 0
    assert torch.isneginf(lse[0, :, [5, 6]]).all()


def test_nan_in_one_head_stays_in_that_head():
    q, k, v = make_qkv(1, 4, 1, 20, d=64)
    q[0, 2, 5, 3] = float("nan")
    (out, lse), _ = forward_both(q, k, v, random_indices(1, 1, 20, 20, 8, empty_fraction=0.0), False)
    assert torch.isnan(out[0, 2, 5]).all() and torch.isnan(lse[0, 2, 5])
    out[0, 2, 5] = 0
    assert torch.isfinite(out).all()

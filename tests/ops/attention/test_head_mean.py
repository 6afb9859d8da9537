"""The CPU attention's forward with the head-mean probabilities per slot (the DSA indexer KL's
target): the target against the float64 reference target, the output and gradients unchanged,
on every instruction-set build this CPU runs (``None`` where the few-heads path does not run)."""

import pytest
import torch
from isa_levels import ISA_LEVELS, require_level

from sparse_attention.ops.attention import cpu, sparse_attention, sparse_attention_with_head_mean
from sparse_attention.ops.indexer_kl.reference import sparse_attention_target


@pytest.fixture(params=ISA_LEVELS)
def isa(request):
    return require_level(cpu.EXTENSION, request.param)


def shared_indices(b, n, top_k, *, seed, ascending):
    """``[B, 1, N, K]`` selections with empty slots, causally hidden keys and (unless ascending)
    rows in random order."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(-1, n, (b, 1, n, top_k), generator=g)
    idx[..., 0] = torch.arange(n)  # every query sees at least itself
    if ascending:  # sorted keys, empty slots last (the DSA selection's layout)
        idx = torch.where(idx < 0, n, idx).sort(-1).values
        idx = torch.where(idx == n, -1, idx)
    return idx


def visible_target(q, k, idx):
    """The float64 reference target over the causally visible slots of ``idx``."""
    n = q.shape[2]
    visible = torch.where(idx[:, 0] <= torch.arange(n)[:, None], idx[:, 0], -1)
    return sparse_attention_target(q.double(), k.double(), visible), visible


@pytest.mark.parametrize("h, h_kv, d, n, top_k, ascending", [
    (16, 4, 64, 300, 40, True),     # the wide preset's GQA 16:4
    (4, 2, 32, 77, 19, False),      # odd length, unsorted rows
    (8, 1, 16, 1200, 300, False),   # MQA 8:1, keys walked in several ranges
    (3, 3, 16, 50, 9, True),        # MHA
])
def test_target_and_output(isa, h, h_kv, d, n, top_k, ascending):
    torch.manual_seed(n)
    q, k, v = torch.randn(2, h, n, d), torch.randn(2, h_kv, n, d), torch.randn(2, h_kv, n, d)
    idx = shared_indices(2, n, top_k, seed=n, ascending=ascending)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out, target = cpu.sparse_attention_cpu_with_head_mean(*leaves, idx, causal=True, scale=d ** -0.5, isa=isa)
    if isa == "generic":  # no few-heads path: the caller computes the target itself
        assert target is None
        return
    expected, visible = visible_target(q, k, idx)
    assert target.shape == (2, n, top_k) and not target.requires_grad
    torch.testing.assert_close(target.double(), expected.double(), atol=2e-6, rtol=1e-5)
    assert not target[visible < 0].any()
    plain = [t.clone().requires_grad_() for t in (q, k, v)]
    expected_out = cpu.sparse_attention_cpu(*plain, idx, causal=True, scale=d ** -0.5, isa=isa)
    torch.testing.assert_close(out, expected_out, atol=0, rtol=0)
    grad = torch.randn_like(out)
    out.backward(grad)
    expected_out.backward(grad)
    for a, b in zip(leaves, plain):
        torch.testing.assert_close(a.grad, b.grad, atol=0, rtol=0)


def test_bfloat16_target_is_that_of_the_rounded_inputs(isa):
    if isa == "generic":
        pytest.skip("no few-heads path in the generic build")
    q, k, v = (torch.randn(1, hh, 90, 32).bfloat16() for hh in (4, 2, 2))
    idx = shared_indices(1, 90, 17, seed=1, ascending=True)
    out, target = cpu.sparse_attention_cpu_with_head_mean(q, k, v, idx, causal=True, scale=32 ** -0.5, isa=isa)
    if target is None:  # bf16 on AMX tiles: no target gathered
        assert cpu.amx_attention_available(isa)
        return
    assert out.dtype == torch.bfloat16 and target.dtype == torch.float32
    torch.testing.assert_close(target.double(), visible_target(q.float(), k.float(), idx)[0].double(), atol=2e-6, rtol=1e-5)


def test_public_function_falls_back_without_a_target():
    q, k, v = torch.randn(1, 4, 20, 16), torch.randn(1, 2, 20, 16), torch.randn(1, 2, 20, 16)
    per_kv_head = torch.randint(0, 20, (1, 2, 20, 5)).sort(-1).values
    out, target = sparse_attention_with_head_mean(q, k, v, per_kv_head)
    assert target is None
    torch.testing.assert_close(out, sparse_attention(q, k, v, per_kv_head))
    out, target = sparse_attention_with_head_mean(q, k, v, per_kv_head[:, :1], backend="reference")
    assert target is None
    with pytest.raises(TypeError, match="causal"):
        sparse_attention_with_head_mean(q, k, v, per_kv_head, causal=1)

"""The DSA sparse-stage indexer loss: the fused CPU kernel against a float64 dense formulation
and against the chunked PyTorch path, across shapes (odd lengths, GQA, feature sizes off the
vector width, more indexer heads than a register block, empty slots and rows, duplicates)."""

import pytest
import torch
from indexer_kl_checks import check_fused_against_float64, dense_indexer_kl, kl_inputs

from isa_levels import LANE_LEVELS, require_build, require_level

from sparse_attention.layers.indexer_loss import sparse_indexer_loss, sparse_indexer_loss_from_target
from sparse_attention.ops.indexer_kl import cpu
from sparse_attention.ops.indexer_kl.reference import sparse_attention_target, sparse_indexer_loss_reference


@pytest.fixture
def cpu_kernel():
    require_build(cpu.EXTENSION)


needs_kernel = pytest.mark.usefixtures("cpu_kernel")


def loss_and_grads(q, k, iq, ik, w, idx, implementation):
    """``[loss, d index_q, d index_k, d weights]`` of one implementation."""
    leaves = [t.clone().requires_grad_() for t in (iq, ik, w)]
    loss = sparse_indexer_loss(q, k, *leaves, idx, implementation=implementation)
    loss.backward()
    return [loss] + [t.grad for t in leaves]


@needs_kernel
@pytest.mark.parametrize("b, h, h_kv, n, d, h_i, d_i, top_k", [
    (2, 4, 2, 37, 16, 2, 16, 6),     # GQA 4:2
    (1, 4, 1, 61, 32, 4, 64, 16),    # MQA, the harness's indexer shape
    (2, 3, 3, 29, 12, 5, 20, 7),     # MHA; D, D_I not multiples of 8; 5 indexer heads
    (1, 2, 2, 1, 8, 1, 8, 3),        # one token
    (1, 2, 1, 40, 8, 3, 24, 64),     # K > N: most slots empty
])
def test_fused_equals_float64(b, h, h_kv, n, d, h_i, d_i, top_k):
    check_fused_against_float64(kl_inputs(b, h, h_kv, n, d, h_i, d_i, top_k, seed=n))


@needs_kernel
def test_rows_without_keys_and_duplicate_slots():
    check_fused_against_float64(kl_inputs(2, 4, 2, 33, 16, 4, 16, 5, empty_rows=3, duplicates=True))


@needs_kernel
def test_no_row_with_a_key_gives_zero_loss_and_zero_gradients():
    q, k, iq, ik, w, idx = kl_inputs(1, 2, 1, 9, 8, 2, 8, 4)
    iq.requires_grad_()
    loss = sparse_indexer_loss(q, k, iq, ik, w, torch.full_like(idx, -1), implementation="fused")
    loss.backward()
    assert loss.item() == 0.0 and not iq.grad.abs().any()


@needs_kernel
def test_bfloat16_inputs_keep_their_gradients_in_bfloat16():
    # The gradients wait from the loss to the backward in the inputs' dtype (half the bytes of a
    # bf16 step's indexer gradients); the leaves get what the float32 gradients round to.
    q, k, iq, ik, w, idx = kl_inputs(1, 4, 2, 50, 16, 4, 32, 9, seed=4)
    narrow = [t.bfloat16().requires_grad_() for t in (iq, ik, w)]
    loss = cpu.indexer_kl_cpu(q, k, *narrow, idx, scale=0.25)
    assert [g.dtype for g in loss.grad_fn.grads] == [torch.bfloat16] * 3
    loss.backward()
    wide = [t.detach().float().requires_grad_() for t in narrow]
    cpu.indexer_kl_cpu(q, k, *wide, idx, scale=0.25).backward()
    for got, want in zip(narrow, wide):
        assert got.grad.dtype == torch.bfloat16
        torch.testing.assert_close(got.grad, want.grad.bfloat16(), rtol=0, atol=0)


@needs_kernel
def test_fused_equals_the_pytorch_path_in_float32():
    q, k, iq, ik, w, idx = kl_inputs(2, 4, 2, 130, 32, 4, 64, 24, seed=3)
    results = {impl: loss_and_grads(q, k, iq, ik, w, idx, impl) for impl in ("fused", "reference")}
    for got, want in zip(results["fused"], results["reference"]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@needs_kernel
@pytest.mark.parametrize("ascending", [False, True])
def test_fused_walks_keys_in_several_ranges(ascending):
    # With D_I = 64 and 2 KV heads of D = 32 a key range of the kernel holds 512 keys (the
    # indexer key row twice, its gradient row and the attention key rows: 512 KiB), so 3000 keys
    # are 6 ranges; blocks of rows are then 128 wide. Against the PyTorch path.
    q, k, iq, ik, w, idx = kl_inputs(1, 4, 2, 3000, 32, 4, 64, 40, seed=11, empty_rows=3, duplicates=True)
    idx[0, -1, :4] = torch.tensor([0, 511, 512, 2999])  # range edges
    if ascending:
        idx = idx.sort(dim=-1).values  # -1 slots first
    results = {impl: loss_and_grads(q, k, iq, ik, w, idx, impl) for impl in ("fused", "reference")}
    for name, got, want in zip(("loss", "index_q", "index_k", "weights"), results["fused"], results["reference"]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=name)


def test_reference_equals_float64():
    inputs = kl_inputs(1, 4, 2, 45, 16, 3, 16, 8, seed=5, empty_rows=2, duplicates=True)
    q, k, iq, ik, w, idx = inputs
    leaves = [t.clone().requires_grad_() for t in (iq, ik, w)]
    loss = sparse_indexer_loss_reference(q, k, *leaves, idx)
    loss.backward()
    ref_leaves = [t.double().requires_grad_() for t in (iq, ik, w)]
    ref = dense_indexer_kl(q, k, *ref_leaves, idx, 16**-0.5)
    ref.backward()
    torch.testing.assert_close(loss.double(), ref, rtol=2e-5, atol=2e-5)
    for got, want in zip(leaves, ref_leaves):
        torch.testing.assert_close(got.grad.double(), want.grad, rtol=2e-5, atol=2e-5)


def test_auto_uses_the_pytorch_path_where_the_kernel_cannot_run():
    q, k, iq, ik, w, idx = (t.double() if t.is_floating_point() else t for t in kl_inputs(1, 2, 1, 20, 8, 2, 8, 4))
    auto = sparse_indexer_loss(q, k, iq, ik, w, idx)  # float64: not the fused kernel's dtype
    torch.testing.assert_close(auto, sparse_indexer_loss_reference(q, k, iq, ik, w, idx))
    with pytest.raises(ValueError, match="implementation='fused' cannot run these inputs: .*float32"):
        sparse_indexer_loss(q, k, iq, ik, w, idx, implementation="fused")


def test_bad_implementation_is_a_clear_error():
    inputs = kl_inputs(1, 2, 1, 8, 8, 2, 8, 4)
    with pytest.raises(ValueError, match="unknown implementation 'fast'"):
        sparse_indexer_loss(*inputs, implementation="fast")


@needs_kernel
def test_out_of_range_key_raises():
    q, k, iq, ik, w, idx = kl_inputs(1, 2, 1, 16, 8, 2, 8, 4)
    idx[0, 5, 1] = 16
    with pytest.raises(ValueError, match="key positions >= N_k"):
        sparse_indexer_loss(q, k, iq, ik, w, idx, implementation="fused")
    with pytest.raises(ValueError, match=r"indices must be \[B, N, K\]"):
        sparse_indexer_loss(q, k, iq, ik, w, idx[:, :3])


@pytest.mark.parametrize("isa", LANE_LEVELS)
@pytest.mark.parametrize("h, h_kv, d, h_i, d_i", [(4, 2, 32, 4, 64), (3, 3, 12, 5, 20)])
def test_every_isa_build(isa, h, h_kv, d, h_i, d_i):
    require_level(cpu.EXTENSION, isa)
    check_fused_against_float64(kl_inputs(2, h, h_kv, 41, d, h_i, d_i, 9, empty_rows=2, duplicates=True), isa=isa)


def loss_and_grads_from_target(target, iq, ik, w, idx, implementation):
    leaves = [t.clone().requires_grad_() for t in (iq, ik, w)]
    loss = sparse_indexer_loss_from_target(target, *leaves, idx, implementation=implementation)
    loss.backward()
    return [loss] + [t.grad for t in leaves]


@pytest.mark.parametrize("isa", [None] + LANE_LEVELS)
@pytest.mark.parametrize("b, h, h_kv, n, d, h_i, d_i, top_k", [
    (2, 16, 4, 70, 64, 4, 64, 24),   # the wide preset's widths
    (1, 4, 1, 61, 32, 5, 20, 16),    # D_I off the vector width, 5 indexer heads
])
def test_from_the_attention_target_equals_the_fused_kernel(isa, b, h, h_kv, n, d, h_i, d_i, top_k):
    if isa is not None:
        require_level(cpu.EXTENSION, isa)
    else:
        require_build(cpu.EXTENSION)
    q, k, iq, ik, w, idx = kl_inputs(b, h, h_kv, n, d, h_i, d_i, top_k, seed=n)  # causal selections
    target = sparse_attention_target(q, k, idx)  # the attention's own is tested in the attention room
    expected = loss_and_grads(q, k, iq, ik, w, idx, "fused")
    for implementation in ("fused", "reference"):
        if implementation == "fused" and isa is not None:
            leaves = [t.clone().requires_grad_() for t in (iq, ik, w)]
            loss = cpu.indexer_kl_from_target_cpu(target, *leaves, idx, isa=isa)
            loss.backward()
            got = [loss] + [t.grad for t in leaves]
        else:
            got = loss_and_grads_from_target(target, iq, ik, w, idx, implementation)
        for a, e in zip(got, expected):
            torch.testing.assert_close(a, e, atol=2e-5, rtol=1e-4)


def test_from_target_checks_the_target_shape():
    q, k, iq, ik, w, idx = kl_inputs(1, 2, 1, 9, 8, 2, 8, 4)
    with pytest.raises(ValueError, match="target must be shaped like indices"):
        sparse_indexer_loss_from_target(torch.zeros(1, 9, 5), iq, ik, w, idx)

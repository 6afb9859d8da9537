"""The CPU kernel's output is stored token-major, and its backward reads any gradient layout.

The output ``[B, H, N, D_v]`` lives in ``[B, N, H, D_v]`` memory, so that the attention layer's
``out.transpose(1, 2).reshape(B, N, H * D_v)`` for the output projection is a view: autograd then
keeps one tensor where it kept the kernel's output and the projection's input copy. The gradient
that comes back through that view is token-major too; the backward reads it (and a contiguous
one) in place, and copies any other layout.
"""

import pytest
import torch
from helpers import make_qkv
from isa_levels import ISA_LEVELS, require_level
from kernel_checks import TOLERANCE, random_indices

from sparse_attention.ops.attention import cpu, sparse_attention


def _gradient_in_layout(shape, layout, dtype):
    """A fixed random gradient ``[B, H, N, D_v]`` stored contiguous, token-major or strided."""
    g = torch.randn(shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64).to(dtype)
    if layout == "contiguous":
        return g.contiguous()
    if layout == "tokens_major":
        return g.transpose(1, 2).contiguous().transpose(1, 2)
    wide = torch.zeros(*shape[:-1], 2 * shape[-1], dtype=dtype)  # every other element: neither layout
    wide[..., ::2] = g
    return wide[..., ::2]


@pytest.mark.parametrize("isa", ISA_LEVELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("h, h_kv, d", [(16, 4, 64), (12, 1, 48), (6, 6, 40)])
def test_output_is_token_major_and_any_gradient_layout_matches_the_reference(isa, dtype, h, h_kv, d):
    require_level(cpu.EXTENSION, isa)
    q, k, v = make_qkv(2, h, h_kv, 45, d=d, dtype=torch.float64)
    idx = random_indices(2, 1, 45, 45, 19, seed=3)
    q, k, v = (t.to(dtype).double() for t in (q, k, v))  # the values the kernel sees
    qr, kr, vr = (t.clone().requires_grad_() for t in (q, k, v))
    ref = sparse_attention(qr, kr, vr, idx, causal=True, backend="reference")
    gradient = _gradient_in_layout(ref.shape, "contiguous", dtype).double()
    ref_grads = torch.autograd.grad(ref, (qr, kr, vr), gradient)
    tol = TOLERANCE[dtype]
    for layout in ("contiguous", "tokens_major", "strided"):
        qc, kc, vc = (t.detach().to(dtype).requires_grad_() for t in (q, k, v))
        out = cpu.sparse_attention_cpu(qc, kc, vc, idx, causal=True, scale=d ** -0.5, isa=isa)
        assert out.transpose(1, 2).is_contiguous()
        torch.testing.assert_close(out.double(), ref.detach(), atol=tol, rtol=tol)
        grads = torch.autograd.grad(out, (qc, kc, vc), _gradient_in_layout(out.shape, layout, dtype))
        for g, g_ref in zip(grads, ref_grads):
            torch.testing.assert_close(g.double(), g_ref, atol=tol, rtol=tol, msg=lambda m: f"{layout}: {m}")


def test_the_layers_projection_input_shares_the_saved_output():
    q, k, v = (t.float().requires_grad_() for t in make_qkv(1, 4, 2, 40, d=16, dtype=torch.float64))
    idx = random_indices(1, 1, 40, 40, 9)
    saved = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = sparse_attention(q, k, v, idx, backend="cpu")
        projection_input = out.transpose(1, 2).reshape(1, 40, 4 * 16)
    storages = {t.untyped_storage().data_ptr() for t in saved}
    assert projection_input.untyped_storage().data_ptr() in storages

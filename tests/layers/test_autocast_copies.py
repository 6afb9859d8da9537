"""Under bf16 autocast the layers cast their input once: the projections that read it save one
low-precision copy for the backward, not one each; outputs equal those of per-op casting."""

import pytest
import torch

from sparse_attention import AttentionConfig, SparseSelfAttention
from sparse_attention.layers.moe import MoEFeedForward
from sparse_attention.utils.autocast import in_autocast_dtype


def _saved_input_copies(fn, x):
    """Distinct storages autograd saves while ``fn()`` runs that hold ``x`` cast to bf16 (in any
    shape: a Linear saves its input flattened)."""
    storages = set()
    cast = x.detach().bfloat16().reshape(-1)

    def pack(tensor):
        if tensor.dtype == torch.bfloat16 and tensor.numel() == cast.numel() and torch.equal(tensor.reshape(-1), cast):
            storages.add(tensor.untyped_storage().data_ptr())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return len(storages)


@pytest.mark.parametrize("method", ["dense", "dsa"])
def test_the_attention_projections_save_one_copy_of_the_input(method, monkeypatch):
    torch.manual_seed(0)
    layer = SparseSelfAttention(AttentionConfig(dim=32, n_heads=4, n_kv_heads=2, method=method,
                                                method_params={"top_k": 4} if method == "dsa" else {},
                                                indexer_heads=2, indexer_head_dim=8))
    x = torch.randn(1, 24, 32, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _saved_input_copies(lambda: layer.forward_with_aux(x), x) == 1
        y, aux = layer.forward_with_aux(x)
        monkeypatch.setattr("sparse_attention.layers.attention.in_autocast_dtype", lambda t: t)
        assert torch.equal(layer.forward_with_aux(x)[0], y)  # each Linear casting for itself
    loss = y.float().square().mean() + (aux.indexer_loss if aux.indexer_loss is not None else 0)
    loss.backward()
    assert x.grad is not None and x.grad.dtype == torch.float32 and torch.isfinite(x.grad).all()


def test_the_experts_save_one_copy_of_their_tokens_and_accumulate_in_the_input_dtype(monkeypatch):
    torch.manual_seed(0)
    moe = MoEFeedForward(16, 32, n_experts=4, top_k=2, n_shared=1)
    x = torch.randn(2, 10, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        # the router and the shared expert's gate and up read all tokens: one copy between them
        assert _saved_input_copies(lambda: moe(x), x) == 1
        out = moe(x).out
        monkeypatch.setattr("sparse_attention.layers.moe.in_autocast_dtype", lambda t: t)
        per_op = moe(x).out  # each Linear casting for itself
    assert out.dtype == torch.float32 and torch.equal(out, per_op)


def test_in_autocast_dtype_only_casts_floats_under_autocast():
    x = torch.randn(3)
    assert in_autocast_dtype(x) is x
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert in_autocast_dtype(x).dtype == torch.bfloat16
        ints = torch.arange(3)
        assert in_autocast_dtype(ints) is ints

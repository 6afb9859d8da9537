"""DSA sparse training in O(N K) (fused selection, logits at the selected keys, sparse-attention
target) against today's dense formulation (every [B, N, N] score, the [B, H, N, N] logits)."""

import pytest
import torch

from sparse_attention import AttentionConfig, SparseSelfAttention
from sparse_attention.ops.topk import indexer_scores
from sparse_attention.layers.indexer_loss import kl_to_indexer, sparse_attention_target
from sparse_attention.ops.dense import _repeat_kv, causal_mask


def dense_target(q, k, indices):
    """The former sparse_attention_target: gathered from the [B, H, N, N] logits."""
    b, h, n, d = q.shape
    logits = (q.float() @ _repeat_kv(k, h).float().transpose(-1, -2)) * d**-0.5
    logits = logits.gather(-1, indices.clamp(min=0)[:, None].expand(b, h, n, indices.shape[-1]))
    logits = logits.masked_fill((indices < 0)[:, None], float("-inf"))
    p = torch.nan_to_num(torch.softmax(logits, dim=-1), nan=0.0).sum(dim=1)
    total = p.sum(dim=-1, keepdim=True)
    return p / torch.where(total > 0, total, torch.ones_like(total))


@pytest.mark.parametrize("n_heads,n_kv_heads", [(4, 2), (4, 1), (2, 2)])
def test_sparse_target_equals_the_dense_gather(n_heads, n_kv_heads):
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, n_heads, 37, 16, generator=gen), torch.randn(2, n_kv_heads, 37, 16, generator=gen)
    idx = torch.randint(0, 37, (2, 37, 6), generator=gen)
    idx = torch.where(idx <= torch.arange(37)[:, None], idx, -1)  # causal, some slots empty
    torch.testing.assert_close(sparse_attention_target(q, k, idx), dense_target(q, k, idx))


@pytest.mark.parametrize("dim", [32, 64])  # heads of 8 (KL computes the target) and of 16 (the attention gathers it)
@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_sparse_stage_loss_and_indexer_gradients_equal_the_dense_formulation(precision, dim):
    torch.manual_seed(0)
    layer = SparseSelfAttention(AttentionConfig(dim=dim, n_heads=4, n_kv_heads=2, method="dsa", indexer_heads=2,
                                                indexer_head_dim=16,
                                                method_params={"top_k": 6, "precision": precision}))
    x = torch.randn(2, 29, dim)
    _, aux = layer.forward_with_aux(x, "sparse")
    indices = aux.selection.indices[:, 0]  # [B, N, K] from the fused selection
    assert aux.selection.info["scoring"] == "fused"
    aux.indexer_loss.backward()
    new = {name: p.grad.clone() for name, p in layer.indexer.named_parameters()}
    layer.zero_grad()
    # Today's formulation with the same selection: every [B, N, N] score with autograd.
    index_q, index_k, weights = layer.indexer(x)
    if precision == "bfloat16":
        index_q, index_k = index_q.bfloat16().float(), index_k.bfloat16().float()
    scores = indexer_scores(index_q, index_k, weights).masked_fill(~causal_mask(29, 29), float("-inf"))
    q, k, _ = layer.project(x)
    loss = kl_to_indexer(dense_target(q.detach(), k.detach(), indices), scores.gather(-1, indices.clamp(min=0)),
                         indices >= 0)
    torch.testing.assert_close(aux.indexer_loss, loss)
    loss.backward()
    for name, p in layer.indexer.named_parameters():
        torch.testing.assert_close(new[name], p.grad, msg=name)
    # The model's parameters get no gradient from the KL (detached input).
    assert all(p.grad is None or not p.grad.abs().any() for n, p in layer.named_parameters() if "indexer" not in n)


def test_the_sparse_stage_never_builds_an_n_by_n_score_matrix(monkeypatch):
    import sparse_attention.layers.attention as attention_module

    def no_full_scores(*args, **kwargs):
        raise AssertionError("the sparse training step must not score every [B, N, N] pair")

    monkeypatch.setattr(attention_module, "indexer_scores", no_full_scores)
    layer = SparseSelfAttention(AttentionConfig(dim=32, n_heads=2, method="dsa", indexer_heads=2, indexer_head_dim=16,
                                                method_params={"top_k": 4}))
    y, aux = layer.forward_with_aux(torch.randn(1, 50, 32), "sparse")
    (y.square().mean() + aux.indexer_loss).backward()
    assert aux.indexer_loss is not None and bool(torch.isfinite(aux.indexer_loss))


def test_the_kl_takes_the_target_the_cpu_attention_gathered(monkeypatch):
    """Heads of 16 on the CPU kernel: the KL must not compute the attention scores again."""
    import sparse_attention.layers.attention as attention_layer
    from sparse_attention.ops.attention import cpu

    if cpu.load_error() is not None:
        pytest.skip(f"attention CPU kernel unavailable: {cpu.load_error()}")

    def fail(*args, **kwargs):
        raise AssertionError("the KL recomputed the attention target")

    monkeypatch.setattr(attention_layer, "sparse_indexer_loss", fail)
    layer = SparseSelfAttention(AttentionConfig(dim=64, n_heads=4, n_kv_heads=2, method="dsa", indexer_heads=2,
                                                indexer_head_dim=16, method_params={"top_k": 6}))
    _, aux = layer.forward_with_aux(torch.randn(1, 40, 64), "sparse")
    assert aux.indexer_loss is not None and bool(torch.isfinite(aux.indexer_loss))

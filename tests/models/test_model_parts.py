"""LM building blocks: MoE routing, the indexer KL objective, attention modes, config handling."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from sparse_attention.layers.attention import AttentionConfig, SparseSelfAttention
from sparse_attention.layers.indexer import LightningIndexer
from sparse_attention.layers.indexer_loss import (
    dense_attention_target,
    kl_to_indexer,
    sparse_attention_target,
)
from sparse_attention.layers.moe import MoEFeedForward
from sparse_attention.models.decoder import SparseLM, attention_config
from sparse_attention.ops.dense import causal_mask
from sparse_attention.ops.topk import indexer_scores
from sparse_attention.training.config import PRESETS, RunConfig, apply_overrides, preset


def test_moe_routes_each_token_to_top_k_experts_plus_shared():
    torch.manual_seed(0)
    moe = MoEFeedForward(dim=8, hidden=16, n_experts=4, top_k=2, n_shared=1)
    x = torch.randn(2, 5, 8)
    out = moe(x)
    assert out.out.shape == x.shape
    assert out.load.sum().item() == pytest.approx(1.0)
    # Reference: a per-token loop over the chosen experts.
    tokens = x.reshape(-1, 8)
    scores = torch.sigmoid(moe.router(tokens))
    top, experts = scores.topk(2, dim=-1)
    gates = top / top.sum(-1, keepdim=True)
    expected = torch.stack([
        sum(gates[t, j] * moe.experts[int(experts[t, j])](tokens[t]) for j in range(2)) + moe.shared[0](tokens[t])
        for t in range(tokens.shape[0])])
    torch.testing.assert_close(out.out.reshape(-1, 8), expected, rtol=1e-5, atol=1e-6)


def test_moe_balancing_loss_is_one_when_uniform():
    moe = MoEFeedForward(dim=4, hidden=4, n_experts=2, top_k=2, n_shared=0)
    torch.nn.init.zeros_(moe.router.weight)  # equal scores: every expert gets every token
    assert moe(torch.randn(1, 6, 4)).aux_loss.item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="top_k"):
        MoEFeedForward(4, 4, n_experts=2, top_k=3)


def test_kl_targets_are_distributions_over_visible_or_selected_keys():
    torch.manual_seed(0)
    q, k = torch.randn(2, 4, 9, 8), torch.randn(2, 2, 9, 8)
    p = dense_attention_target(q, k)
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 9))
    assert not p.masked_select(~causal_mask(9, 9, p.device)).any()
    indices = torch.randint(0, 9, (2, 9, 3))
    indices = torch.where(indices <= torch.arange(9)[:, None], indices, -1)
    indices[:, :, 0] = torch.arange(9)  # every row selects itself...
    indices[1, 4] = -1  # ...except one that selects nothing: all zeros
    ps = sparse_attention_target(q, k, indices)
    expected = torch.ones(2, 9)
    expected[1, 4] = 0
    torch.testing.assert_close(ps.sum(-1), expected)
    assert not ps.masked_select(indices < 0).any()


def test_kl_to_indexer_matches_the_definition():
    torch.manual_seed(0)
    scores = torch.randn(3, 5, requires_grad=True)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 1, 0, 1]], dtype=torch.bool)
    target = torch.softmax(torch.randn(3, 5).masked_fill(~mask, float("-inf")), -1)
    loss = kl_to_indexer(target, scores, mask)
    expected = torch.stack([
        torch.nn.functional.kl_div(torch.log_softmax(scores[i][mask[i]], -1), target[i][mask[i]], reduction="sum")
        for i in range(3)]).mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert scores.grad[~mask].abs().max() == 0


def test_the_layer_scores_with_the_one_indexer_formula():
    layer = LightningIndexer(16, n_heads=3, head_dim=8)
    x = torch.randn(2, 7, 16)
    torch.testing.assert_close(layer.scores(x), indexer_scores(*layer(x)))  # gradients: tests/ops/topk


def test_sparse_inference_selects_like_training_without_an_n_by_n_matrix(monkeypatch):
    # Without gradients the DSA layer selects with the fused O(N K) kernel: the same top-k
    # scores as training selects (ReLU zeros tie at init, so the keys may differ among ties).
    cfg = preset("tiny", attention="dsa").model
    torch.manual_seed(0)
    layer = SparseSelfAttention(attention_config(cfg)).eval()
    x = torch.randn(2, 40, cfg.d_model)
    y_train, aux_train = layer.forward_with_aux(x, "sparse")
    assert aux_train.indexer_loss is not None
    import sparse_attention.layers.attention as lm_attention

    def no_dense_scores(*args, **kwargs):
        raise AssertionError("inference must not build the [B, N, N] indexer scores")

    monkeypatch.setattr(lm_attention, "indexer_scores", no_dense_scores)
    with torch.no_grad():
        y_eval, aux_eval = layer.forward_with_aux(x, "sparse")
    assert aux_eval.indexer_loss is None and aux_eval.selection.info["scoring"] == "fused"
    assert y_eval.shape == y_train.shape and bool(torch.isfinite(y_eval).all())
    with torch.no_grad():
        scores = indexer_scores(*layer.indexer(x))  # [B, N, N]
    scores = scores.masked_fill(~causal_mask(40, 40, x.device), float("-inf"))

    def selected_scores(aux):
        idx = aux.selection.indices[:, 0]
        got = torch.where(idx >= 0, scores.gather(-1, idx.clamp(min=0)), torch.tensor(float("-inf")))
        return got.sort(dim=-1).values

    torch.testing.assert_close(selected_scores(aux_eval), selected_scores(aux_train), rtol=1e-5, atol=1e-6)


def test_attention_modes_and_their_errors():
    config = preset("tiny", "dsa").model
    layer = SparseSelfAttention(attention_config(config))
    x = torch.randn(2, 12, config.d_model)
    y, aux = layer.forward_with_aux(x, "sparse", collect=True, keep_scores=True)
    assert y.shape == x.shape and aux.selection.indices.shape == (2, 1, 12, config.top_k)
    assert aux.indexer_scores.shape == (2, 12, 12)
    assert {"sparsity", "recall", "oracle_recall", "indexer_kl", "coverage", "mean_distance"} <= aux.stats.keys()
    assert aux.stats["recall"] <= aux.stats["oracle_recall"] + 1e-6  # the oracle is the exact upper bound
    _, warm = layer.forward_with_aux(x, "warmup")
    assert warm.indexer_loss is not None and warm.selection is None
    with pytest.raises(ValueError, match="mode"):
        layer.forward_with_aux(x, "fast")
    dense = SparseSelfAttention(attention_config(preset("tiny", "dense").model))
    with pytest.raises(ValueError, match="warmup"):
        dense.forward_with_aux(x, "warmup")
    with pytest.raises(ValueError, match="sparse"):
        dense.forward_with_aux(x, "sparse")
    other = SparseSelfAttention(attention_config(preset("tiny", "local").model))
    _, aux = other.forward_with_aux(x, "sparse")
    assert aux.indexer_loss is None and aux.selection.method == "local"


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_round_trip_through_dicts(name):
    config = preset(name, "dsa")
    assert RunConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()


def test_overrides_convert_types_and_reject_unknown_keys():
    config = apply_overrides(preset("tiny"), ["train.main.lr=1", "model.method_params={\"window\": 4}",
                                              "train.betas=[0.8, 0.9]", "data.source=needle"])
    assert config.train.main.lr == 1.0 and isinstance(config.train.main.lr, float)
    assert config.train.betas == (0.8, 0.9) and config.data.source == "needle"
    with pytest.raises(ValueError, match="KEY=VALUE"):
        apply_overrides(config, ["train.main.lr"])
    with pytest.raises(ValueError, match="unknown config section"):
        apply_overrides(config, ["optim.lr=1"])
    with pytest.raises(ValueError, match="expected a int"):
        apply_overrides(config, ["model.d_model=wide"])
    with pytest.raises(ValueError, match="unknown preset"):
        preset("huge")


def test_a_conflicting_top_k_is_an_error_that_names_both():
    with pytest.raises(ValueError, match=r"model.method_params.top_k \(5\) conflicts with model.top_k \(8\)"):
        apply_overrides(preset("tiny", "dsa"), ['model.method_params={"top_k": 5}'])
    same = apply_overrides(preset("tiny", "dsa"), ['model.method_params={"top_k": 8}'])  # redundant, not conflicting
    assert same.model.selection_params["top_k"] == 8
    with pytest.raises(ValueError, match="model.method_params.precision .* conflicts with train.precision"):
        apply_overrides(preset("tiny", "dsa"), ['model.method_params={"precision": "bfloat16"}'])
    with pytest.raises(ValueError, match="train.dtype .* conflicts with train.precision"):
        apply_overrides(preset("tiny", "dsa"), ['train.dtype="bfloat16"'])


def test_method_params_reach_the_dsa_selection_of_the_lm():
    # model.top_k and model.method_params scoring / precision are what the LM's DSA layers select
    # with, in training (scores with autograd) and in inference (dsa_select).
    config = apply_overrides(preset("tiny", "dsa"), [
        "model.top_k=5", "train.precision=bf16", 'model.method_params={"scoring": "chunked", "precision": "bfloat16"}'])
    layer = SparseSelfAttention(attention_config(config.model))
    assert layer.top_k == 5 and layer.selection_params["top_k"] == 5
    x = torch.randn(2, 24, config.model.d_model)
    _, train_aux = layer.forward_with_aux(x, "sparse")
    assert train_aux.selection.top_k == 5 and train_aux.selection.info["precision"] == "bfloat16"
    with torch.no_grad():
        _, eval_aux = layer.forward_with_aux(x, "sparse")
    assert eval_aux.selection.top_k == 5
    assert eval_aux.selection.info["scoring"] == "chunked" and eval_aux.selection.info["precision"] == "bfloat16"
    # ... and through the whole LM, in the layers it builds.
    model = SparseLM(dataclasses.replace(config.model, vocab_size=64))
    tokens = torch.randint(0, 64, (2, 24))
    with torch.no_grad():
        out = model(tokens)
    assert all(aux.selection.top_k == 5 and aux.selection.info["scoring"] == "chunked"
               and aux.selection.info["precision"] == "bfloat16" for aux in out.layers)
    # The library layer's own indexer takes them too.
    generic = SparseSelfAttention(AttentionConfig(dim=32, n_heads=2, method="dsa", indexer_heads=2,
                                                  indexer_head_dim=16,
                                                  method_params={"top_k": 3, "scoring": "chunked"}))
    _, selection = generic(torch.randn(1, 10, 32), return_selection=True)
    assert selection.top_k == 3 and selection.info["scoring"] == "chunked"


def test_with_changes_returns_a_new_validated_config():
    config = preset("tiny", "dsa")
    dense = config.with_changes(model={"attention": "dense"}, train={"seq_len": 16})
    assert dense.model.attention == "dense" and dense.train.seq_len == 16
    assert config.model.attention == "dsa" and config.train.seq_len != 16  # the original is unchanged
    with pytest.raises(ValueError, match="unknown model fields"):
        config.with_changes(model={"atention": "dense"})
    with pytest.raises(ValueError, match="unknown config section"):
        config.with_changes(optimizer={"lr": 1.0})
    with pytest.raises(ValueError):
        config.with_changes(model={"top_k": 0})  # validated like any config


def test_training_steps_can_drop_the_selections():
    config = preset("tiny", "dsa").model
    model = SparseLM(dataclasses.replace(config, vocab_size=32))
    tokens = torch.randint(0, 32, (1, 16))
    assert all(aux.selection is not None for aux in model(tokens).layers)
    out = model(tokens, tokens, keep_selections=False)
    assert all(aux.selection is None for aux in out.layers) and out.loss is not None
    assert all(aux.selection is not None for aux in model(tokens, keep_selections=False, collect=True).layers)

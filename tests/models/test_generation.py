"""Decoding from the KV cache: the cached step-by-step logits equal the parallel forward's, and
greedy generation gives the same tokens with and without the cache (dense, dsa, local, topk)."""

import pytest
import torch

from sparse_attention.models.config import ModelConfig
from sparse_attention.models.decoder import SparseLM
from sparse_attention.models.generation import generate, sample_next

CASES = [("dense", {}), ("dsa", {"top_k": 6}), ("local", {"method_params": {"window": 5}}), ("topk", {"top_k": 6})]


def _model(attention, extra, seed=1):
    cfg = ModelConfig(vocab_size=61, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, n_experts=2,
                      expert_top_k=1, attention=attention, indexer_heads=2, indexer_head_dim=16, **extra)
    return SparseLM(cfg, seed=seed).eval()


@pytest.mark.parametrize("attention,extra", CASES)
def test_cached_logits_equal_the_parallel_forward(attention, extra):
    model = _model(attention, extra)
    ids = torch.randint(0, 61, (2, 23), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(ids).logits
        cache = model.new_cache()
        steps = [model.decode(ids[:, :9], cache)] + [model.decode(ids[:, t:t + 1], cache) for t in range(9, 23)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache[0].length == 23
    if attention == "dsa":  # the indexer keys are cached beside the KV cache
        assert cache[0].index_k.shape == (2, 23, 16)
    else:
        assert cache[0].index_k is None


@pytest.mark.parametrize("attention,extra", CASES)
def test_greedy_tokens_are_the_same_with_and_without_the_cache(attention, extra):
    model = _model(attention, extra, seed=2)
    prompt = torch.randint(0, 61, (2, 7), generator=torch.Generator().manual_seed(1))
    cached = model.generate(prompt, 12)
    uncached = generate(model, prompt, 12, use_cache=False)
    assert cached.shape == (2, 19) and torch.equal(cached[:, :7], prompt)
    assert torch.equal(cached, uncached)


def test_sampling_is_reproducible_and_top_p_keeps_the_nucleus():
    model = _model("dense", {})
    prompt = torch.zeros(1, 3, dtype=torch.long)
    a = generate(model, prompt, 8, temperature=1.0, top_p=0.9, seed=5)
    b = generate(model, prompt, 8, temperature=1.0, top_p=0.9, seed=5)
    assert torch.equal(a, b)
    logits = torch.tensor([[4.0, 3.0, -5.0, -6.0]])  # p ~ [0.73, 0.27, ...]: a 0.5 nucleus is token 0 alone
    picks = {int(sample_next(logits, temperature=1.0, top_p=0.5, generator=torch.Generator().manual_seed(s)))
             for s in range(20)}
    assert picks == {0}


@pytest.mark.parametrize("kwargs, text", [({"max_new_tokens": -1}, "max_new_tokens"),
                                          ({"max_new_tokens": 2, "temperature": -1.0}, "temperature"),
                                          ({"max_new_tokens": 2, "top_p": 0.0}, "top_p")])
def test_bad_generation_arguments(kwargs, text):
    with pytest.raises(ValueError, match=text):
        generate(_model("dense", {}), torch.zeros(1, 2, dtype=torch.long), **kwargs)


def test_a_non_causal_layer_cannot_decode():
    from sparse_attention import AttentionConfig, SparseSelfAttention
    from sparse_attention.layers.kv_cache import LayerCache

    layer = SparseSelfAttention(AttentionConfig(dim=16, n_heads=2, causal=False))
    with pytest.raises(ValueError, match="non-causal"):
        layer.decode(torch.randn(1, 2, 16), LayerCache())


def test_layer_cache_grows_in_place_and_holds_every_appended_token():
    from sparse_attention.layers.kv_cache import LayerCache

    gen = torch.Generator().manual_seed(0)
    cache = LayerCache()
    ks, vs, iks = [], [], []
    for n in (5, 1, 1, 12, 1, 30, 1):  # a prompt, single steps, and chunks that outgrow the buffer
        k, v = torch.randn(2, 3, n, 4, generator=gen), torch.randn(2, 3, n, 4, generator=gen)
        ik = torch.randn(2, n, 6, generator=gen)
        cache.append(k, v, ik)
        ks.append(k), vs.append(v), iks.append(ik)
        assert cache.length == sum(t.shape[2] for t in ks)
        assert torch.equal(cache.k, torch.cat(ks, dim=2)) and torch.equal(cache.v, torch.cat(vs, dim=2))
        assert torch.equal(cache.index_k, torch.cat(iks, dim=1))
    assert cache._k.shape[2] < 2 * cache.length + 16  # capacity doubles, not more

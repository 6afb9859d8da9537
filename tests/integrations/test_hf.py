"""Hugging Face transformers with this package's attention: full coverage equals SDPA (with and
without padding), generation with the cache equals generation without it; a random tiny Llama
(no download) and the offline all-MiniLM-L6-v2 encoder."""

import copy

import pytest
import torch

from sparse_attention.data import minilm
from sparse_attention.selection import list_methods

transformers = pytest.importorskip("transformers")
hf = pytest.importorskip("sparse_attention.integrations.hf")

METHODS = [spec.name for spec in list_methods()]


def _llama_config():
    return transformers.LlamaConfig(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, intermediate_size=96, max_position_embeddings=256)


def _pair(name: str, config):
    """The SDPA model and the same weights under ``name``."""
    torch.manual_seed(0)
    ref = transformers.AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation="sdpa").eval()
    model = transformers.AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation=name).eval()
    model.load_state_dict(ref.state_dict())
    return ref, model


def _padded_batch(vocab: int, n: int = 24):
    ids = torch.randint(0, vocab, (3, n), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(3, n, dtype=torch.long)
    mask[0, :6] = 0  # left padding
    mask[2, :1] = 0
    return ids, mask


@pytest.mark.parametrize("method", METHODS)
def test_causal_lm_at_full_coverage_equals_sdpa(method):
    ids, mask = _padded_batch(97)
    # Full coverage of this length (a budget of 10**6 keys costs a local window of 10**6 slots a row).
    params = next(s for s in list_methods() if s.name == method).full_coverage(ids.shape[1])
    ref, model = _pair(hf.register(method, **params), _llama_config())
    with torch.no_grad():
        for attention_mask in (None, mask):
            want = ref(ids, attention_mask=attention_mask).logits
            got = model(ids, attention_mask=attention_mask).logits
            real = torch.ones_like(ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
            torch.testing.assert_close(got[real], want[real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method,params", [("topk", {"top_k": 5}), ("dsa", {"top_k": 5}), ("local", {"window": 4})])
def test_greedy_generation_is_the_same_with_and_without_the_cache(method, params):
    _, model = _pair(hf.register(method, **params), _llama_config())
    ids, mask = _padded_batch(97, n=10)
    cached = model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, use_cache=True)
    uncached = model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, use_cache=False)
    assert cached.shape == (3, 18) and torch.equal(cached, uncached)


def test_sparse_reads_the_method_from_the_config():
    hf.register()
    config = _llama_config()
    config.sparse_attention = {"method": "local", "window": 3}
    _, model = _pair("sparse", config)
    explicit = _pair(hf.register("local", window=3), _llama_config())[1]
    ids, _ = _padded_batch(97)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, explicit(ids).logits)


def test_bad_method_or_parameter():
    with pytest.raises(ValueError, match="unknown method"):
        hf.register("magic")
    with pytest.raises(ValueError, match="no parameter"):
        hf.register("topk", window=3)


def test_a_mask_of_another_shape_is_refused():
    with pytest.raises(ValueError, match="not causal"):
        hf._mask_parts(torch.ones(1, 1, 4, 4, dtype=torch.bool).tril(-1) | torch.eye(4, dtype=torch.bool).roll(1, 0),
                       True, 1, 4, 4)


@pytest.fixture(scope="module")
def minilm_reference():
    """all-MiniLM-L6-v2 under SDPA and its outputs on a batch, with and without right padding."""
    if minilm.unavailable_reason() is not None:
        pytest.skip(str(minilm.unavailable_reason()))
    ref = transformers.AutoModel.from_pretrained(str(minilm.model_dir()), attn_implementation="sdpa").eval()
    ids = torch.randint(1000, 20000, (2, 30), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 30, dtype=torch.long)
    mask[1, 21:] = 0  # right padding, as BERT tokenizers pad
    with torch.no_grad():
        outputs = {m is None: ref(ids, attention_mask=m).last_hidden_state for m in (None, mask)}
    return ids, mask, outputs


@pytest.mark.parametrize("method", METHODS)
def test_minilm_encoder_at_full_coverage_equals_sdpa(method, minilm_reference):
    ids, mask, outputs = minilm_reference
    params = next(s for s in list_methods() if s.name == method).full_coverage(ids.shape[1])
    name = hf.register(method, **params)
    model = transformers.AutoModel.from_pretrained(str(minilm.model_dir()), attn_implementation=name).eval()
    with torch.no_grad():
        for attention_mask in (None, mask):
            got = model(ids, attention_mask=attention_mask).last_hidden_state
            real = torch.ones_like(ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
            torch.testing.assert_close(got[real], outputs[attention_mask is None][real], atol=1e-5, rtol=1e-5)

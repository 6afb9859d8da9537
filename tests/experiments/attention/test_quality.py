"""Output-quality experiment: its evaluation equals the sparse kernel, and its section's invariants."""

import json

import pytest
import torch
from helpers import make_qkv

from sparse_attention.data import minilm
from sparse_attention.experiments.attention import quality
from sparse_attention.experiments.attention.context import (
    RunContext,
    SuiteConfig,
    all_methods,
)
from sparse_attention.ops.dense import masked_dense_attention
from sparse_attention.ops.attention import sparse_attention
from sparse_attention.selection.base import select
from sparse_attention.selection.stats import attention_recall

SMALL = {"budget": 16, "heads": 2, "kv_heads": 1, "head_dim": 16, "lengths": (64, 128)}
METRICS = ("cosine", "rel_l2", "recall", "edges_per_query", "sparsity", "causal_sparsity")


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("method", all_methods())
def test_masked_dense_oracle_equals_sparse_kernel_with_recall(method, causal):
    q, k, v = make_qkv(b=2, h=4, h_kv=2, n_q=70, d=16, seed=3)
    params = {"top_k": 9} if method in ("topk", "dsa") else {"window": 9} if method == "local" else {}
    selection = select(q, k, method, causal=causal, **params)
    out, recall = masked_dense_attention(q, k, v, selection.indices, causal=selection.causal, return_recall=True)
    expected = sparse_attention(q, k, v, selection.indices, causal=causal)
    assert torch.allclose(out, expected, atol=1e-5)
    assert torch.allclose(recall, attention_recall(selection, q, k, per_query=True), atol=1e-5)


@pytest.mark.parametrize("method", ["local", "topk"])
def test_masked_dense_oracle_edge_cases(method):
    # Huge logits: the selected keys of many rows underflow against the row maximum (the fallback path).
    q, k, v = make_qkv(b=1, h=2, h_kv=1, n_q=50, d=16, seed=4)
    q = q * 40
    params = {"window": 5} if method == "local" else {"top_k": 5}
    for causal in (True, False):
        selection = select(q, k, method, causal=causal, **params)
        out, _ = masked_dense_attention(q, k, v, selection.indices, causal=selection.causal, return_recall=True)
        # Against the float64 kernel: logits of ~10^2 make two fp32 kernels that sum in different
        # orders differ by ~1e-5 (each stays within ~1e-5 of float64).
        expected = sparse_attention(q.double(), k.double(), v.double(), selection.indices, causal=causal,
                                    backend="reference")
        assert torch.allclose(out.double(), expected, atol=2e-5)
    # More queries than keys, causal: the first queries see no key (zeros, recall 1 as in attention_recall).
    q, k, v = make_qkv(b=1, h=2, h_kv=2, n_q=40, n_k=30, d=8, seed=5)
    selection = select(q, k, method, causal=True, **params)
    out, recall = masked_dense_attention(q, k, v, selection.indices, causal=selection.causal, return_recall=True)
    assert torch.allclose(out, sparse_attention(q, k, v, selection.indices, causal=True), atol=1e-5)
    assert bool((out[:, :, :10] == 0).all())
    assert torch.allclose(recall, attention_recall(selection, q, k, per_query=True), atol=1e-5)


def test_effective_keys_bounds():
    q, k, _ = make_qkv(b=1, h=2, h_kv=2, n_q=40, d=8)
    eff = quality.effective_keys(q, k, causal=True)  # [1, 2, 40]
    visible = torch.arange(1, 41, dtype=torch.float32)
    assert bool((eff >= 1 - 1e-4).all() and (eff <= visible + 1e-3).all())
    assert torch.allclose(quality.effective_keys(torch.zeros_like(q), k, causal=False), torch.full((1, 2, 40), 40.0))


def _run(monkeypatch, **overrides):
    monkeypatch.setattr(quality, "REAL_TOKENS", 64)  # the real model at 64 tokens keeps the test fast
    monkeypatch.setattr(quality, "CORPUS_CHARS", 20_000)
    return quality.run(RunContext(SuiteConfig(**{**SMALL, **overrides})))


def _check_rows(rows, methods):
    for r in rows:
        assert 0.0 <= r["recall"] <= 1.0 + 1e-6 and -1.0 <= r["cosine"] <= 1.0 + 1e-6 and r["rel_l2"] >= 0.0
        assert 0.0 <= r["sparsity"] <= 1.0 and -1e-9 <= r["causal_sparsity"] <= 1.0
        visible = (r["n"] + 1) / 2 if r["causal"] else r["n"]
        assert 0.0 < r["edges_per_query"] <= visible + 1e-9
        if r["method"] == "dense":
            assert r["recall"] == pytest.approx(1.0, abs=1e-6) and r["cosine"] == pytest.approx(1.0, abs=1e-5)
            assert r["rel_l2"] == pytest.approx(0.0, abs=1e-5) and r["causal_sparsity"] == pytest.approx(0.0)
    for key in {(r["source"], r["causal"]) for r in rows}:
        by_method = {r["method"]: r for r in rows if (r["source"], r["causal"]) == key}
        assert list(by_method) == list(methods)
        # Exact top-k maximises each head's kept mass among selections of the same size.
        for other in ("local", "dsa"):
            if other in by_method and by_method[other]["edges_per_query"] <= by_method["topk"]["edges_per_query"]:
                assert by_method["topk"]["recall"] >= by_method[other]["recall"] - 1e-6


@pytest.mark.skipif(minilm.unavailable_reason() is not None, reason="all-MiniLM-L6-v2 not installed")
def test_run_with_real_attention(monkeypatch):
    section = _run(monkeypatch)
    methods = SuiteConfig(**SMALL).methods
    json.dumps(section)  # JSON-serialisable
    assert {(r["source"], r["causal"]) for r in section["rows"]} == {
        ("gaussian", True), ("clustered", True), ("real", False), ("real", True)}
    assert all(r["n"] == 128 for r in section["rows"] if r["source"] != "real")  # middle of (64, 128)
    _check_rows(section["rows"], methods)
    real = section["real"]
    assert real["layers"] == 6 and real["n_tokens"] == 64 and "skipped" not in real
    layer_rows = section["layer_rows"]
    assert len(layer_rows) == real["layers"] * len(methods) * 2
    _check_rows(layer_rows, methods)
    for r in (r for r in section["rows"] if r["source"] == "real"):
        mine = [x for x in layer_rows if x["method"] == r["method"] and x["causal"] == r["causal"]]
        for key in METRICS:
            assert r[key] == pytest.approx(sum(x[key] for x in mine) / len(mine))
    # Attention really differs by layer (the reason per-layer rows are kept).
    assert len({round(p["effective_keys"], 3) for p in section["profiles"] if p["source"] == "real"}) > 1


def test_run_without_model_is_skipped_and_deterministic(monkeypatch):
    monkeypatch.setattr(minilm, "unavailable_reason", lambda: "not installed; `pip install --no-deps x`")
    methods = ("dense", "local", "topk", "ssa")
    section = _run(monkeypatch, methods=methods)
    assert section["real"] == {"skipped": "not installed; `pip install --no-deps x`"}
    assert section["layer_rows"] == [] and {r["source"] for r in section["rows"]} == {"gaussian", "clustered"}
    _check_rows(section["rows"], methods)
    again = _run(monkeypatch, methods=methods)
    assert again["rows"] == section["rows"]
    # Clustered attention is concentrated on few keys; i.i.d. Gaussian attention is spread out.
    eff = {p["source"]: p["effective_keys"] for p in section["profiles"]}
    assert eff["clustered"] < eff["gaussian"]

"""Fuzzing every backend and selection method against the float64 reference (Hypothesis).

Random shapes (lengths 1..300, or 1..``SPARSE_ATTENTION_FUZZ_MAX_LEN``; N_q != N_k too, GQA ratios 1/2/4, H_sel in {1, H_kv, H},
D in {16, 32, 64, 80, 128}), random index sets with ``-1`` slots, duplicates, out-of-causal
indices and rows with no valid key, NaN/Inf sprinkled into q/k/v, float32 and bfloat16, causal
and not. Checked:

* every backend that accepts the inputs: the output against the float64 reference kernel
  (non-finite entries at exactly the same places, finite ones within tolerance) and, without
  non-finite inputs, the gradients of q, k and v;
* every selection method: exact causality (no selected key past a query's position, and the
  selection of rows <= t unchanged when keys after t change) and determinism (two calls give
  identical indices).

The default run tries ``SPARSE_ATTENTION_FUZZ_EXAMPLES`` (default 60) examples per test, in
seconds on 2 cores; ``SPARSE_ATTENTION_FUZZ_EXAMPLES=2000 python -m pytest tests/fuzz
--hypothesis-show-statistics`` is the long profile.
"""

from __future__ import annotations

import os

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import sparse_attention as sa  # noqa: E402
from sparse_attention.ops.attention import choose_backend  # noqa: E402
from sparse_attention.ops.attention.reference import sparse_attention_reference  # noqa: E402

EXAMPLES = int(os.environ.get("SPARSE_ATTENTION_FUZZ_EXAMPLES", "60"))
#: Longest sequence drawn. The Triton interpreter runs a Python loop per (batch, query, KV head)
#: program, so its run (tests/ops/attention/test_triton.py) draws shorter ones: the index slots,
#: which its programs walk in blocks, are up to 48 at any length.
MAX_LEN = int(os.environ.get("SPARSE_ATTENTION_FUZZ_MAX_LEN", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 100,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
METHODS = [m.name for m in sa.list_methods()]
TOLERANCE = {torch.float32: 2e-4, torch.bfloat16: 3e-2}


@st.composite
def kernel_case(draw):
    """``(q, k, v, indices, causal)`` with every awkward feature the contract allows."""
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    b = draw(st.integers(1, 2))
    h_kv = draw(st.integers(1, 3))
    h = h_kv * draw(st.sampled_from([1, 2, 4]))
    n_q = draw(st.integers(1, MAX_LEN))
    n_k = n_q if draw(st.booleans()) else draw(st.integers(1, MAX_LEN))
    d = draw(st.sampled_from([16, 32, 64, 80, 128]))
    h_sel = draw(st.sampled_from(sorted({1, h_kv, h})))
    slots = draw(st.integers(1, 48))
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16]))
    causal = draw(st.booleans())
    q, k, v = (torch.randn(b, heads, n, d, generator=gen) for heads, n in ((h, n_q), (h_kv, n_k), (h_kv, n_k)))
    idx = torch.randint(0, n_k, (b, h_sel, n_q, slots), generator=gen)  # duplicates and future keys included
    idx = idx.masked_fill(torch.rand(idx.shape, generator=gen) < draw(st.sampled_from([0.0, 0.3, 0.9])), -1)
    if draw(st.booleans()):
        idx[:, :, torch.randint(0, n_q, (1,), generator=gen)] = -1  # a row with no valid key
    nonfinite = draw(st.sampled_from(["none", "none", "nan_q", "nan_k", "nan_v", "inf_v"]))
    if nonfinite != "none":
        target = {"nan_q": q, "nan_k": k, "nan_v": v, "inf_v": v}[nonfinite]
        flat = target.view(-1)
        flat[torch.randint(0, flat.numel(), (2,), generator=gen)] = float("nan") if "nan" in nonfinite else float("inf")
    return q.to(dtype), k.to(dtype), v.to(dtype), idx, causal, nonfinite


def _expected(q, k, v, idx, causal):
    """The float64 reference on the same (rounded) inputs."""
    return sparse_attention_reference(q.double(), k.double(), v.double(), idx, causal=causal,
                                      scale=q.shape[-1] ** -0.5)


def _assert_same(out, expected, tolerance, what):
    out = out.double()
    bad = ~torch.isfinite(expected)
    assert torch.equal(~torch.isfinite(out), bad), f"{what}: non-finite entries differ"
    finite = ~bad
    if finite.any():
        error = (out[finite] - expected[finite]).abs().max().item()
        scale = max(1.0, expected[finite].abs().max().item())
        assert error <= tolerance * scale, f"{what}: max error {error:.3g} > {tolerance * scale:.3g}"


@pytest.fixture(scope="module")
def fast_backends():
    """Every fast backend that can run here (Triton too under TRITON_INTERPRET=1:
    tests/ops/attention/test_triton.py); asked when the test starts, after the session's builds."""
    names = [b.name for b in sa.backends() if b.name != "reference" and b.unavailable() is None]
    if not names:
        pytest.skip("no fast backend can run on this machine")
    return names


@FUZZ
@given(case=kernel_case())
def test_backends_match_the_float64_reference(fast_backends, case):
    q, k, v, idx, causal, nonfinite = case
    expected = _expected(q, k, v, idx, causal)
    for name in fast_backends:
        try:
            choose_backend(name, q, k, v, idx, needs_grad=nonfinite == "none")
        except ValueError:
            continue  # this backend declines these inputs (and says why); the reference runs them
        if nonfinite != "none":
            with torch.no_grad():
                out = sa.sparse_attention(q, k, v, idx, causal=causal, backend=name)
            _assert_same(out, expected, TOLERANCE[q.dtype], f"{name} output")
            continue
        qg, kg, vg = (t.detach().clone().requires_grad_() for t in (q, k, v))
        out = sa.sparse_attention(qg, kg, vg, idx, causal=causal, backend=name)
        _assert_same(out, expected, TOLERANCE[q.dtype], f"{name} output")
        upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        got = torch.autograd.grad(out, (qg, kg, vg), upstream.to(out.dtype))
        q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
        ref = sparse_attention_reference(q64, k64, v64, idx, causal=causal, scale=q.shape[-1] ** -0.5)
        want = torch.autograd.grad(ref, (q64, k64, v64), upstream.double())
        for label, g, w in zip("qkv", got, want):
            _assert_same(g, w, 4 * TOLERANCE[q.dtype], f"{name} grad {label}")


@st.composite
def selection_case(draw):
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    h_kv = draw(st.integers(1, 2))
    h = h_kv * draw(st.sampled_from([1, 2]))
    n = draw(st.integers(1, 200))
    d = draw(st.sampled_from([16, 32]))
    q, k = torch.randn(1, h, n, d, generator=gen), torch.randn(1, h_kv, n, d, generator=gen)
    t = draw(st.integers(0, n - 1))
    return q, k, t, draw(st.integers(1, 32))


@FUZZ
@given(case=selection_case(), method=st.sampled_from(METHODS))
def test_selections_are_exactly_causal_and_deterministic(case, method):
    q, k, t, budget = case
    params = {"local": {"window": budget}, "topk": {"top_k": budget}, "dsa": {"top_k": budget}}.get(method, {})
    first = sa.select(q, k, method, causal=True, **params)
    again = sa.select(q, k, method, causal=True, **params)
    assert torch.equal(first.indices, again.indices), "two calls selected differently"
    n = q.shape[2]
    idx = first.indices
    assert not ((idx > torch.arange(n)[:, None]) & (idx >= 0)).any(), "a key past its query was selected"
    # Keys and queries after position t change: the selection of rows <= t does not.
    q2, k2 = q.clone(), k.clone()
    q2[:, :, t + 1:] = torch.randn_like(q2[:, :, t + 1:])
    k2[:, :, t + 1:] = torch.randn_like(k2[:, :, t + 1:])
    later = sa.select(q2, k2, method, causal=True, **params).indices
    rows = slice(0, t + 1)

    def as_sets(indices):
        return [sorted(set(r[r >= 0].tolist())) for r in indices[..., rows, :].reshape(-1, indices.shape[-1])]

    assert as_sets(idx) == as_sets(later), "rows <= t changed when only later tokens did"

"""One rule for NaN, on every path (README, "The kernel contract"):

* NaN in a query row stays in that row: that head's output row is NaN; other heads and rows
  stay finite (a selection shared by heads may then be arbitrary for that token, its output
  is still finite).
* NaN in key or value ``j`` reaches exactly the rows whose selection holds ``j``. The top-k
  scorers (``topk``, ``dsa``; fused and chunked scoring alike) rank a NaN score above every
  number, as ``torch.topk`` does, so they select ``j`` wherever it is visible: the NaN rows are
  those of dense attention.
"""

from __future__ import annotations

import pytest
import torch
from helpers import make_qkv

import sparse_attention as sa
from sparse_attention.ops.attention import choose_backend

SCORERS = [("topk", "fused"), ("topk", "chunked"), ("dsa", "fused"), ("dsa", "chunked")]
#: Every backend; one that cannot run here is skipped with its reason when the test starts (Triton needs
#: CUDA, or TRITON_INTERPRET=1: tests/ops/attention/test_triton.py runs this file so under the interpreter).
BACKENDS = ["reference"] + [b.name for b in sa.backends() if b.name != "reference"]


def run_or_skip(backend: str, q, k, v, indices, causal: bool):
    """``sparse_attention`` on ``backend``; skipped where the backend cannot run here or declines these inputs."""
    try:
        choose_backend(backend, q, k, v, indices, needs_grad=False)
    except ValueError as err:
        pytest.skip(str(err))
    return sa.sparse_attention(q, k, v, indices, causal=causal, backend=backend)
N, H, H_KV, D = 40, 4, 2, 16


def nan_rows(out: torch.Tensor) -> torch.Tensor:
    """``[B, H, N]`` bool: rows of ``out [B, H, N, D]`` holding a NaN."""
    return out.isnan().any(-1)


def rows_reaching(selection, key: int, kv_head: int) -> torch.Tensor:
    """``[B, H, N]`` bool: rows of the query heads of ``kv_head`` whose selection holds ``key``
    (and, causal, may see it)."""
    idx = selection.indices
    hit = (idx == key).any(-1)  # [B, H_sel, N]
    if selection.causal:
        hit &= torch.arange(idx.shape[2]) >= key
    hit = hit.expand(idx.shape[0], H, idx.shape[2]) if hit.shape[1] == 1 else hit.repeat_interleave(
        H // hit.shape[1], dim=1)
    return hit & (torch.arange(H) // (H // H_KV) == kv_head)[None, :, None]


@pytest.mark.parametrize("method,scoring", SCORERS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("causal", [True, False])
def test_nan_in_a_query_row_stays_in_that_row(method, scoring, backend, causal):
    q, k, v = make_qkv(1, H, H_KV, N, d=D, seed=1)
    q[0, 1, 7, 3] = float("nan")
    selection = sa.select(q, k, method, causal=causal, top_k=8, scoring=scoring)
    out = run_or_skip(backend, q, k, v, selection.indices, causal)
    expected = torch.zeros(1, H, N, dtype=torch.bool)
    expected[0, 1, 7] = True
    assert torch.equal(nan_rows(out), expected)


@pytest.mark.parametrize("method,scoring", SCORERS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("where", ["key", "value"])
def test_top_k_scorers_select_a_nan_key_like_dense_attention(method, scoring, backend, causal, where):
    q, k, v = make_qkv(1, H, H_KV, N, d=D, seed=2)
    if where == "key":
        k[0, 0, 3, 5] = float("nan")
    else:
        v[0, 0, 3, 5] = float("nan")
    selection = sa.select(q, k, method, causal=causal, top_k=8, scoring=scoring)
    out = run_or_skip(backend, q, k, v, selection.indices, causal)
    dense = sa.dense_attention(q, k, v, causal=causal)
    if where == "key":  # a NaN key makes its score NaN: selected wherever visible
        assert torch.equal(nan_rows(out), nan_rows(dense))
    else:  # a NaN value only reaches the rows that select it
        assert torch.equal(nan_rows(out), rows_reaching(selection, 3, kv_head=0))


@pytest.mark.parametrize("method", [m.name for m in sa.list_methods()])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("where", ["key", "value"])
def test_every_method_confines_a_nan_key_or_value_to_the_rows_that_select_it(method, backend, where):
    q, k, v = make_qkv(1, H, H_KV, N, d=D, seed=3)
    (k if where == "key" else v)[0, 1, 11, 0] = float("nan")
    params = {"top_k": 8} if method in ("topk", "dsa") else {"window": 8} if method == "local" else {}
    selection = sa.select(q, k, method, causal=True, **params)
    out = run_or_skip(backend, q, k, v, selection.indices, True)
    assert torch.equal(nan_rows(out), rows_reaching(selection, 11, kv_head=1))

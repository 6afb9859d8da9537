"""The fused scoring + top-k kernel against torch scores + ``torch.topk``.

Two correct top-k selections may differ where scores tie, so the checks compare the selected
*scores* (float64, recomputed from the inputs) with the reference's top-k values, and check
the index rows themselves: distinct, causally visible, ``-1`` only where keys run out.
"""

import pytest
import torch
from isa_levels import OTHER_LEVELS, require_build, require_level
from topk_checks import check_rows, indexer_inputs, visible

from sparse_attention.ops.topk import cpu as topk_cpu
from sparse_attention.ops.topk import indexer_scores
from sparse_attention.selection import dsa_select, select


@pytest.fixture(autouse=True)
def _needs_the_cpu_build():
    require_build(topk_cpu.EXTENSION)


@pytest.mark.parametrize("n, top_k", [(1, 1), (63, 1), (63, 5), (63, 63), (63, 100), (1000, 37), (1000, 1000),
                                      (4096, 256)])
@pytest.mark.parametrize("causal", [True, False])
def test_dsa_fused_matches_chunked_scores(n, top_k, causal):
    index_q, index_k, weights = indexer_inputs(2 if n < 4096 else 1, 4, n, n, 32, seed=n + top_k)
    sel = dsa_select(index_q, index_k, weights, top_k=top_k, causal=causal, scoring="fused")
    assert sel.info["scoring"] == "fused" and sel.indices.shape[1] == 1
    scores = indexer_scores(index_q.double(), index_k.double(), weights.double())
    check_rows(sel.indices[:, 0], scores, top_k, visible(n, n, causal))


@pytest.mark.parametrize("h_i, d", [(1, 64), (3, 17), (5, 24), (8, 128)])
def test_dsa_fused_head_counts_dims_and_cross_lengths(h_i, d):
    index_q, index_k, weights = indexer_inputs(1, h_i, 70, 150, d)  # N_q < N_k: end-aligned causal
    for causal in (True, False):
        sel = dsa_select(index_q, index_k, weights, top_k=40, causal=causal, scoring="fused")
        scores = indexer_scores(index_q.double(), index_k.double(), weights.double())
        check_rows(sel.indices[:, 0], scores, 40, visible(70, 150, causal))


@pytest.mark.parametrize("h, h_kv", [(4, 4), (4, 2), (6, 1)])
@pytest.mark.parametrize("n, top_k", [(63, 9), (300, 64), (257, 300)])
def test_exact_topk_fused_per_head(h, h_kv, n, top_k):
    gen = torch.Generator().manual_seed(n)
    q = torch.randn(2, h, n, 20, generator=gen)
    k = torch.randn(2, h_kv, n, 20, generator=gen)
    sel = select(q, k, "topk", top_k=top_k, scoring="fused")
    assert sel.info["scoring"] == "fused" and sel.indices.shape[:3] == (2, h, n)
    scores = q.double() @ k.double().repeat_interleave(h // h_kv, dim=1).transpose(-1, -2)  # [B, H, N, N]
    check_rows(sel.indices.reshape(2 * h, n, -1), scores.reshape(2 * h, n, n), top_k, visible(n, n, True))


def test_auto_uses_fused_on_cpu_and_chunked_for_float64():
    index_q, index_k, weights = indexer_inputs(1, 2, 50, 50, 8)
    assert dsa_select(index_q, index_k, weights, top_k=8).info["scoring"] == "fused"
    assert dsa_select(index_q.double(), index_k.double(), weights.double(), top_k=8).info["scoring"] == "chunked"
    with pytest.raises(ValueError, match="scoring='fused' cannot run these inputs: .*float64"):
        dsa_select(index_q.double(), index_k.double(), weights.double(), top_k=8, scoring="fused")
    with pytest.raises(ValueError, match="unknown scoring 'fast'"):
        dsa_select(index_q, index_k, weights, top_k=8, scoring="fast")


def test_ties_and_nan():
    index_q, index_k, weights = indexer_inputs(1, 4, 40, 40, 8)
    # All scores zero (ReLU of negative products): any K distinct visible keys are a top-k.
    sel = dsa_select(-index_q.abs(), index_k.abs(), weights, top_k=7, scoring="fused")
    idx = sel.indices[0, 0]
    assert ((idx >= 0).sum(-1) == torch.arange(1, 41).clamp(max=7)).all()
    assert all(row[row >= 0].unique().numel() == (row >= 0).sum() for row in idx)
    # A NaN score ranks above every number (as torch.topk orders it): every query selects key 3,
    # in both precisions and like the chunked scorer; the rows still fill up.
    index_k = index_k.clone()
    index_k[0, 3] = float("nan")
    for precision in ("float32", "bfloat16"):
        for scoring in ("fused", "chunked"):
            idx = dsa_select(index_q, index_k, weights, top_k=7, causal=False, scoring=scoring,
                             precision=precision).indices[0, 0]
            assert (idx == 3).any(-1).all() and (idx >= 0).all(), (precision, scoring)


def test_bfloat16_inputs_are_scored_exactly():
    index_q, index_k, weights = (t.bfloat16() for t in indexer_inputs(1, 4, 200, 200, 32))
    sel = dsa_select(index_q, index_k, weights, top_k=20, scoring="fused")
    scores = indexer_scores(index_q.double(), index_k.double(), weights.double())
    check_rows(sel.indices[:, 0], scores, 20, visible(200, 200, True))


def rounded(*tensors):
    return tuple(t.bfloat16().double() for t in tensors)


@pytest.mark.parametrize("avoid_amx", [False, True])
@pytest.mark.parametrize("h_i, n, d, top_k", [(4, 300, 64, 32), (3, 130, 40, 130), (1, 70, 17, 9), (40, 65, 32, 8)])
def test_bfloat16_precision_scores_rounded_inputs(avoid_amx, h_i, n, d, top_k):
    index_q, index_k, weights = indexer_inputs(2, h_i, n, n, d, seed=h_i)
    for causal in (True, False):
        idx = topk_cpu.fused_topk(index_q, index_k, weights, top_k=top_k, causal=causal, relu=True,
                                  precision="bfloat16", _avoid_amx=avoid_amx)
        q64, k64 = rounded(index_q, index_k)  # the products are exact in fp32; only the sums round
        check_rows(idx, indexer_scores(q64, k64, weights.double()), top_k, visible(n, n, causal))


def test_bfloat16_precision_runs_on_every_cpu():
    # Without AMX or AVX512-BF16 the fp32 kernel scores the rounded inputs: never an error.
    assert topk_cpu.bf16_path() in ("amx", "avx512_bf16", topk_cpu.BF16_EMULATION)
    assert topk_cpu.supports(torch.zeros(1), torch.zeros(1), None, precision="bfloat16") is None


def test_dsa_select_precision_fused_and_chunked_agree():
    index_q, index_k, weights = indexer_inputs(1, 4, 257, 257, 64)
    q64, k64 = rounded(index_q, index_k)
    for scoring in ("fused", "chunked"):
        sel = dsa_select(index_q, index_k, weights, top_k=50, scoring=scoring, precision="bfloat16")
        assert sel.info["precision"] == "bfloat16" and sel.info["scoring"] == scoring
        check_rows(sel.indices[:, 0], indexer_scores(q64, k64, weights.double()), 50, visible(257, 257, True))
    with pytest.raises(ValueError, match="precision must be one of"):
        dsa_select(index_q, index_k, weights, top_k=5, precision="fp8")


@pytest.mark.parametrize("isa", OTHER_LEVELS)
@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
@pytest.mark.parametrize("h_i, n, d, top_k", [(4, 300, 64, 32), (3, 130, 40, 130), (1, 70, 17, 9)])
def test_every_isa_build(isa, precision, h_i, n, d, top_k):
    require_level(topk_cpu.EXTENSION, isa)
    index_q, index_k, weights = indexer_inputs(2, h_i, n, n, d, seed=h_i)
    q64, k64 = index_q.double(), index_k.double()
    if precision == "bfloat16":  # the products of rounded inputs are exact; only the sums round
        q64, k64 = rounded(q64, k64)
    for causal in (True, False):
        idx = topk_cpu.fused_topk(index_q, index_k, weights, top_k=top_k, causal=causal, relu=True,
                                  precision=precision, isa=isa)
        check_rows(idx, indexer_scores(q64, k64, weights.double()), top_k, visible(n, n, causal))

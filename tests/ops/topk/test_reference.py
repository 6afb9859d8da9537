"""The score formula every top-k path ranks by (:func:`weighted_scores`), against its definition
written as loops, and the chunked reference top-k against ``torch.topk`` of the full matrix."""

import pytest
import torch
from topk_checks import check_rows, indexer_inputs, visible

from sparse_attention.ops.topk import indexer_scores, scored_topk, weighted_scores


def scores_by_definition(q, k, w, relu, group):
    """``I[r, t, s] = sum_j w[r, t, j] * f(q[r, j, t] . k[r // group, s])``, one term at a time."""
    r, j, c, _ = q.shape
    out = torch.zeros(r, c, k.shape[1], dtype=torch.float64)
    for row in range(r):
        for head in range(j):
            dots = q[row, head].double() @ k[row // group].double().T  # [C, N]
            dots = dots.relu() if relu else dots
            out[row] += dots * (1.0 if w is None else w[row, :, head].double()[:, None])
    return out


@pytest.mark.parametrize("r, j, c, n, d, group, relu, weighted", [
    (2, 4, 9, 13, 8, 1, True, True),  # the lightning indexer: R = B, J = H_I
    (6, 1, 7, 11, 5, 3, False, False),  # exact top-k, GQA 3:1
    (4, 3, 1, 1, 16, 2, True, False),  # one query, one key
])
def test_weighted_scores_are_the_definition(r, j, c, n, d, group, relu, weighted):
    gen = torch.Generator().manual_seed(r + j)
    q, k = torch.randn(r, j, c, d, generator=gen), torch.randn(r // group, n, d, generator=gen)
    w = torch.randn(r, c, j, generator=gen) if weighted else None
    got = weighted_scores(q.double(), k.double(), None if w is None else w.double(), relu=relu, group=group)
    torch.testing.assert_close(got, scores_by_definition(q, k, w, relu, group))


def test_indexer_scores_slices_and_gradients():
    iq, ik, w = (t.double() for t in indexer_inputs(2, 3, 10, 10, 6))
    full = indexer_scores(iq, ik, w)
    torch.testing.assert_close(full, scores_by_definition(iq, ik, w, True, 1))
    torch.testing.assert_close(indexer_scores(iq, ik, w, slice(2, 5), 7), full[:, 2:5, :7])
    assert torch.autograd.gradcheck(indexer_scores, (iq.requires_grad_(), ik.requires_grad_(), w.requires_grad_()))


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("n_q, n_k, top_k", [(1, 1, 1), (40, 40, 7), (30, 70, 100)])
def test_chunked_reference_keeps_the_top_scores(causal, n_q, n_k, top_k):
    iq, ik, w = indexer_inputs(2, 3, n_q, n_k, 8, seed=n_k)
    idx, ran = scored_topk(iq, ik, w, top_k=top_k, causal=causal, relu=True, scoring="chunked")
    assert ran == "chunked"
    check_rows(idx, indexer_scores(iq.double(), ik.double(), w.double()), top_k, visible(n_q, n_k, causal))


def test_key_mask_keeps_padded_keys_out_on_every_implementation():
    iq, ik, w = indexer_inputs(2, 2, 20, 20, 8)
    mask = torch.ones(2, 20, dtype=torch.bool)
    mask[0, 5:9] = False
    idx, ran = scored_topk(iq, ik, w, top_k=6, causal=False, relu=True, key_mask=mask)
    assert ran == "chunked"  # auto: the fused kernel takes no key mask, and says so
    assert not torch.isin(idx[0], torch.arange(5, 9)).any()
    with pytest.raises(ValueError, match="scoring='fused' cannot run these inputs: takes no key_mask"):
        scored_topk(iq, ik, w, top_k=6, causal=False, relu=True, key_mask=mask, scoring="fused")

"""Shared checks of the fused DSA sparse-stage indexer loss against a float64 dense formulation
(every ``[B, N, N]`` indexer score and ``[B, H, N, N]`` attention logit, gathered at the
selection), used by the layer tests and by every CPU build's tests."""

import torch

from sparse_attention.ops.dense import _repeat_kv
from sparse_attention.ops.indexer_kl.cpu import indexer_kl_cpu
from sparse_attention.ops.topk import indexer_scores


def kl_inputs(b, h, h_kv, n, d, h_i, d_i, top_k, *, seed=0, empty_rows=0, duplicates=False):
    """Random attention q, k, indexer tensors and a causal selection ``[B, N, K]`` with empty slots
    (-1), the first ``empty_rows`` rows of every batch left without keys, optional duplicate keys."""
    gen = torch.Generator().manual_seed(seed)
    q, k = torch.randn(b, h, n, d, generator=gen), torch.randn(b, h_kv, n, d, generator=gen)
    iq, ik = torch.randn(b, h_i, n, d_i, generator=gen), torch.randn(b, n, d_i, generator=gen)
    w = torch.randn(b, n, h_i, generator=gen)
    idx = torch.randint(0, n, (b, n, top_k), generator=gen)
    idx = torch.where(idx <= torch.arange(n)[:, None], idx, -1)  # causal; later keys become empty slots
    if duplicates:
        idx[:, :, -1] = idx[:, :, 0]
    idx[:, :empty_rows] = -1
    return q, k, iq, ik, w, idx


def dense_indexer_kl(q, k, iq, ik, w, idx, scale):
    """The loss in float64 from the full score matrices (differentiable in iq, ik, w)."""
    q, k = q.double(), k.double()
    b, h, n, d = q.shape
    top_k = idx.shape[-1]
    valid = idx >= 0
    gather = idx.clamp(min=0)
    scores = indexer_scores(iq.double(), ik.double(), w.double())  # [B, N, N]
    selected = scores.gather(-1, gather).masked_fill(~valid, float("-inf"))  # [B, N, K]
    logits = (q @ _repeat_kv(k, h).transpose(-1, -2)) * scale  # [B, H, N, N]
    logits = logits.gather(-1, gather[:, None].expand(b, h, n, top_k)).masked_fill(~valid[:, None], float("-inf"))
    target = torch.nan_to_num(torch.softmax(logits, -1), nan=0.0).mean(1)  # [B, N, K]
    log_q = torch.log_softmax(selected, -1)
    terms = torch.where(target > 0, target * (torch.log(target.clamp_min(1e-300)) - log_q.masked_fill(~valid, 0)),
                        torch.zeros_like(target))
    rows = valid.any(-1)
    return terms.sum(-1)[rows].mean()


def check_fused_against_float64(inputs, *, isa=None, tol=2e-5):
    """The fused loss and its gradients in iq, ik, w equal the float64 formulation."""
    q, k, iq, ik, w, idx = inputs
    scale = q.shape[-1] ** -0.5
    fused_in = [t.clone().requires_grad_() for t in (iq, ik, w)]
    loss = indexer_kl_cpu(q, k, *fused_in, idx, scale=scale, isa=isa)
    loss.backward()
    ref_in = [t.double().requires_grad_() for t in (iq, ik, w)]
    ref = dense_indexer_kl(q, k, *ref_in, idx, scale)
    ref.backward()
    torch.testing.assert_close(loss.double(), ref, rtol=tol, atol=tol)
    for name, got, want in zip(("index_q", "index_k", "weights"), fused_in, ref_in):
        torch.testing.assert_close(got.grad.double(), want.grad, rtol=tol, atol=tol, msg=name)

"""Shared checks of top-k selections against float64 scores (fused top-k tests, every CPU build)."""

import torch


def visible(n_q, n_k, causal):
    limit = torch.arange(n_q) + (n_k - n_q) if causal else torch.full((n_q,), n_k - 1)
    return torch.arange(n_k)[None, :] <= limit[:, None]  # [N_q, N_k]


def check_rows(idx, scores, top_k, mask):
    """idx [R, N_q, K] against float64 scores [R, N_q, N_k] and the visibility mask [N_q, N_k]."""
    n_q, n_k = mask.shape
    k_eff = min(top_k, n_k)
    assert idx.shape == (scores.shape[0], n_q, k_eff) and idx.dtype == torch.int64
    masked = scores.masked_fill(~mask, float("-inf"))
    want = masked.topk(k_eff, dim=-1).values  # descending
    got = torch.where(idx >= 0, masked.gather(-1, idx.clamp(min=0)), torch.tensor(float("-inf"), dtype=scores.dtype))
    got = got.sort(dim=-1, descending=True).values
    finite = torch.isfinite(want)
    assert torch.equal(finite, torch.isfinite(got)), "a slot is filled where no key is visible, or left empty"
    torch.testing.assert_close(got[finite], want[finite], rtol=1e-5, atol=1e-5)
    valid = idx[idx >= 0]
    assert (valid < n_k).all()
    assert ((idx >= 0).sum(-1) == mask.sum(-1).clamp(max=k_eff)).all()
    for row in idx.reshape(-1, k_eff)[:200]:  # distinct keys per row
        kept = row[row >= 0]
        assert kept.unique().numel() == kept.numel()


def indexer_inputs(b, h_i, n_q, n_k, d, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h_i, n_q, d, generator=gen), torch.randn(b, n_k, d, generator=gen),
            torch.rand(b, n_q, h_i, generator=gen))

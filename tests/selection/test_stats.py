"""Selection statistics computed from the selection."""

import pytest
import torch
from helpers import make_qkv

from sparse_attention import Selection, attention_recall, select, selection_stats


def test_dense_stats():
    q, k, _ = make_qkv(1, 2, 2, 10)
    stats = selection_stats(select(q, k, "dense"), q, k)
    assert stats.edges == 55 and stats.edges_per_query == 5.5
    assert stats.causal_sparsity == 0.0
    assert stats.sparsity == pytest.approx(1 - 55 / 100)
    assert stats.attention_recall == pytest.approx(1.0)
    assert stats.empty_rows == 0.0


def test_hand_made_selection():
    idx = torch.tensor([[[[0, -1], [0, 1], [-1, -1], [1, 3]]]])  # row 2 empty; row 3 keys 1, 3
    sel = Selection(idx, n_keys=4, causal=True, method="custom")
    stats = selection_stats(sel)
    assert stats.edges == 5 and stats.min_edges_per_query == 0 and stats.max_edges_per_query == 2
    assert stats.empty_rows == 0.25
    assert stats.mean_distance == pytest.approx((0 + 1 + 0 + 2 + 0) / 5)
    assert stats.causal_sparsity == pytest.approx(1 - 5 / 10)
    assert stats.attention_recall is None


def test_recall_matches_dense_probabilities_and_sparsity_in_range():
    q, k, _ = make_qkv(1, 4, 2, 40)
    sel = select(q, k, "local", window=4)
    per_query = attention_recall(sel, q, k, per_query=True)
    probs = torch.softmax((q @ k.repeat_interleave(2, 1).transpose(-1, -2)) / 4 +
                          torch.full((40, 40), float("-inf")).triu(1), dim=-1)
    window = (torch.arange(40)[None, :] > torch.arange(40)[:, None] - 4) & \
        (torch.arange(40)[None, :] <= torch.arange(40)[:, None])
    assert torch.allclose(per_query, (probs * window).sum(-1), atol=1e-5)
    stats = selection_stats(sel, q, k)
    assert 0 < stats.sparsity < 1 and 0 < stats.causal_sparsity < 1
    assert stats.edges == float((sel.indices >= 0).sum())

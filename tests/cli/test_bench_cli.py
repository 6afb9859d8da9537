"""Smoke run of `sparse-attention bench kernels` (tiny sizes) and its validation."""

import json

import pytest
import torch

from sparse_attention.bench.kernels import (
    KernelBenchConfig,
    causal_random_indices,
    selection_overlap,
)
from sparse_attention.cli.main import main


def test_bench_kernels_tiny(tmp_path, capsys):
    path = tmp_path / "bench.json"
    assert main(["bench", "kernels", "--lengths", "64", "--top-k", "8", "--heads", "8:1", "--repeats", "1",
                 "--json", str(path)]) == 0
    results = json.loads(path.read_text())
    for key in ("device", "torch", "threads", "git_sha"):
        assert key in results["machine"]
    rows = {r["backend"]: r for r in results["rows"]}
    assert rows["dense_sdpa"]["status"] == "ok"
    assert rows["reference"]["correctness"]["passed"]
    for name, row in rows.items():
        if row["status"] == "ok" and name != "dense_sdpa":
            assert row["forward_speedup"] == pytest.approx(rows["dense_sdpa"]["forward_ms"] / row["forward_ms"])
            assert row["ideal_ratio"] == pytest.approx((64 * 65 / 2) / (64 * 8))
    out = capsys.readouterr().out
    assert "| 64 | 8 | 8:1 |" in out
    if rows["triton"]["status"] == "unsupported":  # no GPU here: the table says why, not just "unsupported"
        assert f"unsupported: {rows['triton']['reason'].split('inputs: ')[-1]}" in out


def test_bench_dsa_end_to_end(tmp_path):
    path = tmp_path / "bench.json"
    assert main(["bench", "kernels", "--lengths", "64", "--top-k", "8", "--heads", "4:1", "--repeats", "1",
                 "--backends", "reference", "--no-backward", "--indexer-heads", "2", "--indexer-dim", "16",
                 "--json", str(path)]) == 0
    rows = json.loads(path.read_text())["rows"]
    e2e = {r["indexer_precision"]: r for r in rows if r["backend"].startswith("dsa end to end")}
    assert set(e2e) == {"float32", "bfloat16"}
    for row in e2e.values():
        assert row["forward_ms"] > 0 and row["selection_ms"] > 0 and row["forward_speedup"] > 0
    assert 0.5 < e2e["bfloat16"]["overlap_with_float32_selection"] <= 1.0


def test_selection_overlap_counts_shared_valid_slots():
    ref = torch.tensor([[[0, 1, 2, -1], [3, 1, -1, -1]]])
    idx = torch.tensor([[[2, 1, 5, -1], [-1, -1, -1, 3]]])
    assert selection_overlap(idx, ref) == pytest.approx(3 / 5)  # row 0: keys 1, 2; row 1: key 3
    assert selection_overlap(ref, ref, chunk=1) == 1.0


def test_random_causal_indices_are_valid():
    idx = causal_random_indices(1, 1, 50, 6, seed=0, device="cpu")
    assert idx.shape == (1, 1, 50, 6)
    assert bool(((idx >= 0) & (idx <= torch.arange(50)[:, None])).all())
    rows = idx[0, 0]
    assert bool((rows[5:, 1:] > rows[5:, :-1]).all())  # distinct and ascending once t + 1 >= K
    assert rows[2].tolist() == [0, 1, 2, 2, 2, 2]  # t + 1 < K: keys 0 .. t, then t repeated
    assert rows[-1].max() > 40 and rows[-1].min() < 10  # spread over the visible keys


@pytest.mark.parametrize("kwargs, match", [
    ({"dtype": "float64"}, "dtype"),
    ({"lengths": (64, 128), "top_k": (8, 8, 8)}, "top_k"),
    ({"heads": ((6, 4),)}, "heads"),
    ({"selection": "random"}, "selection"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        KernelBenchConfig(**kwargs)


def test_bad_heads_argument(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "kernels", "--heads", "sixteen"])
    assert "H:H_kv" in capsys.readouterr().err


def test_bench_table_into_readme(tmp_path):
    from sparse_attention.report.readme import BENCH_BEGIN, BENCH_END

    path = tmp_path / "bench.json"
    assert main(["bench", "kernels", "--lengths", "32", "--top-k", "4", "--heads", "2:1", "--repeats", "1",
                 "--backends", "reference", "--no-backward", "--json", str(path)]) == 0
    readme = tmp_path / "README.md"
    readme.write_text(f"x\n{BENCH_BEGIN}\nold\n{BENCH_END}\n")
    assert main(["bench", "table", str(path), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "old" not in text and "| 32 | 4 | 2:1 | float32 | reference |" in text

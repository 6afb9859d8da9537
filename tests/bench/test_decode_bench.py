"""The decode-step benchmark on tiny caches: rows, ratio, table, clear errors."""

import pytest

from sparse_attention.bench.decode import DecodeBenchConfig, markdown_table, run_decode_bench
from sparse_attention.cli.main import main


def test_rows_and_table(tmp_path, capsys):
    results = run_decode_bench(DecodeBenchConfig(lengths=(64, 256), heads=4, top_k=32, indexer_heads=2,
                                                 indexer_dim=16, repeats=2))
    assert [r["cache_length"] for r in results["rows"]] == [64, 256]
    for r in results["rows"]:
        assert r["dense_ms"] > 0 and r["dsa_ms"] > 0 and r["speedup"] == pytest.approx(r["dense_ms"] / r["dsa_ms"])
    assert "| 256 | 32 |" in markdown_table(results) and "cpu_kernel" in results["machine"]
    out = tmp_path / "decode.json"
    assert main(["bench", "decode", "--lengths", "64", "--heads", "4:1", "--top-k", "16", "--indexer-dim", "16",
                 "--repeats", "1", "--json", str(out)]) == 0
    assert out.exists() and "dense / DSA" in capsys.readouterr().out


def test_bad_config():
    with pytest.raises(ValueError, match="kv_heads"):
        DecodeBenchConfig(heads=4, kv_heads=3)
    with pytest.raises(ValueError, match="lengths"):
        DecodeBenchConfig(lengths=())

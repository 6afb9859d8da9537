"""Smoke runs of every command."""

import json
import subprocess
import sys

import pytest

from sparse_attention.cli.main import main


def test_methods_lists_every_method(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in ("dense", "local", "topk", "dsa", "ssa", "routing", "lsh"):
        assert f"{name}:" in out
    assert "top_k = 64:" in out


def test_backends(capsys):
    assert main(["backends"]) == 0
    assert "reference" in capsys.readouterr().out


def test_demo_tiny(tmp_path, capsys):
    path = tmp_path / "demo.json"
    assert main(["demo", "--length", "64", "--heads", "2", "--kv-heads", "1", "--head-dim", "16", "--budget", "8",
                 "--json", str(path)]) == 0
    out = capsys.readouterr().out
    rows = json.loads(path.read_text())["rows"]
    assert {r["method"] for r in rows} == {"dense", "local", "topk", "dsa", "ssa", "routing", "lsh"}
    dense = next(r for r in rows if r["method"] == "dense")
    assert abs(dense["recall"] - 1) < 1e-6 and abs(dense["cosine"] - 1) < 1e-5
    for r in rows:
        assert f"| {r['method']} |" in out
        assert 0.0 <= r["causal_sparsity"] <= 1.0


def test_bad_arguments_give_one_line_errors(capsys):
    try:
        main(["demo", "--length", "0"])
    except SystemExit as exit_:
        assert exit_.code == 2
    assert "length must be an int >= 1" in capsys.readouterr().err


def test_python_dash_m_entry_point():
    result = subprocess.run([sys.executable, "-m", "sparse_attention", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "methods" in result.stdout


def test_version(capsys):
    import sparse_attention

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"sparse-attention {sparse_attention.__version__}"

"""Peer libraries in `bench kernels --peers`: adapters, missing libraries, names, CLI rows."""

import json

import pytest
import torch
from helpers import assert_close, make_qkv

from sparse_attention.bench import peers
from sparse_attention.bench.kernels import KernelBenchConfig, markdown_table
from sparse_attention.bench.peers import PEERS, build_peer, measure_peer, resolve_peers
from sparse_attention.cli.main import main
from sparse_attention.ops.attention import sparse_attention


@pytest.mark.parametrize("name", list(PEERS))
def test_adapter_output_layout_and_gradients(name):
    pytest.importorskip(PEERS[name].module)
    q, k, v = make_qkv(h=4, h_kv=2, n_q=64, d=8, requires_grad=True)
    built = build_peer(name, q, k, top_k=8)
    out = built.fn(q, k, v)
    assert out.shape == (1, 4, 64, 8) and bool(torch.isfinite(out).all())
    assert built.keys_per_query > 0 and built.settings
    if not built.backward:  # FlexAttention on CPU: forward only, and the output says so
        assert name == "flex" and not out.requires_grad
        return
    (dq,) = torch.autograd.grad(out.sum(), (q,))
    assert float(dq.abs().sum()) > 0


def test_local_attention_adapter_is_our_sliding_window():
    """Same window, same GQA head mapping: the peer equals our kernel on indices [i-K, i]."""
    pytest.importorskip("local_attention")
    n, w = 40, 8
    q, k, v = make_qkv(h=4, h_kv=2, n_q=n, d=8)
    built = build_peer("local-attention", q, k, top_k=w)
    pos = torch.arange(n)[:, None] - torch.arange(w, -1, -1)  # [N, w + 1]: keys i - w .. i
    idx = torch.where(pos >= 0, pos, -1)[None, None]
    assert_close(built.fn(q, k, v), sparse_attention(q, k, v, idx, backend="reference"), tol=1e-5)
    assert built.keys_per_query == pytest.approx(float((torch.arange(n).clamp(max=w) + 1).double().mean()))


def test_flex_peer_is_our_attention_on_its_block_selection():
    """FlexAttention with the block mask equals the reference kernel on the same selection."""
    n, k = 70, 32  # blocks of 16: two random earlier blocks per query block, a partial last block
    q, kk, v = make_qkv(h=4, h_kv=2, n_q=n, d=16)
    built = build_peer("flex", q, kk, top_k=k)
    idx = built.indices
    assert idx.shape[:3] == (1, 1, n) and bool((idx <= torch.arange(n)[:, None]).all())
    assert bool(((idx >= 0).sum(-1) <= k).all())
    assert_close(built.fn(q, kk, v), sparse_attention(q, kk, v, idx, backend="reference"), tol=1e-5)
    assert built.keys_per_query == pytest.approx(float((idx >= 0).sum(-1).double().mean()), rel=0.25)


def test_reformer_ignores_keys():
    """reformer-pytorch shares QK: the settings say so, and k does not change the output."""
    pytest.importorskip("reformer_pytorch")
    q, k, v = make_qkv(h=2, h_kv=2, n_q=64, d=8)
    built = build_peer("reformer", q, k, top_k=16)
    other_k = torch.randn_like(k)
    torch.manual_seed(0)
    a = built.fn(q, k, v)
    torch.manual_seed(0)  # the hash rotations are random per call
    assert torch.equal(a, built.fn(q, other_k, v))
    assert "shared QK" in built.settings


def _row(name, n=64, k=8, timed=None):
    q, kk, v = make_qkv(h=2, h_kv=1, n_q=n, d=8, requires_grad=True)
    dense = {"forward_ms": 2.0, "forward_backward_ms": 6.0}
    base = {"n": n, "top_k": k, "heads": "2:1", "dtype": "float32"}
    timed = timed or (lambda fwd, inputs: {"forward_ms": 1.0, "forward_backward_ms": 2.0})
    return measure_peer(name, q, kk, v, k, timed, dense, base, backward=True)


def test_missing_library_row_is_not_timed(monkeypatch):
    def no_import(module):
        raise ImportError(f"No module named {module!r}")

    monkeypatch.setattr(peers.importlib, "import_module", no_import)

    def timed(*_):
        raise AssertionError("a missing peer must not be timed")

    row = _row("local-attention", timed=timed)
    assert row["status"] == "not installed (pip install sparse-attention[peers])"
    assert row["kind"] == "peer" and "forward_ms" not in row and "not applicable" in row["correctness"]
    table = markdown_table({"machine": {}, "rows": [row]})
    assert "| peer:local-attention |" in table and "not installed" in table


def test_peer_row_ratios_and_error_at_a_size():
    pytest.importorskip("local_attention")
    row = _row("local-attention")
    assert row["status"] == "ok" and row["forward_speedup"] == 2.0 and row["forward_backward_speedup"] == 3.0
    assert row["ideal_ratio"] == pytest.approx((64 * 65 / 2) / (64 * row["keys_per_query"]))
    pytest.importorskip("reformer_pytorch")
    bad = _row("reformer", n=100, k=16)  # LSH needs N divisible by 2 * bucket_size = 16
    assert bad["status"] == "error" and "divisible" in bad["reason"] and "forward_ms" not in bad


def test_peer_names():
    assert resolve_peers(("all",)) == tuple(PEERS)
    assert resolve_peers(("reformer-pytorch,nsa", "reformer")) == ("reformer", "nsa")
    with pytest.raises(ValueError, match="known peers: all, local-attention"):
        KernelBenchConfig(peers=("longformer",))


def test_cli_peers_all(tmp_path, capsys):
    path = tmp_path / "bench.json"
    assert main(["bench", "kernels", "--lengths", "128", "--top-k", "16", "--peers", "all", "--repeats", "1",
                 "--heads", "4:1", "--backends", "reference", "--json", str(path)]) == 0
    rows = json.loads(path.read_text())["rows"]
    dense = rows[0]
    assert dense["backend"] == "dense_sdpa" and dense["keys_per_query"] == 64.5
    peer_rows = {r["backend"]: r for r in rows if r.get("kind") == "peer"}
    assert list(peer_rows) == [f"peer:{name}" for name in PEERS]
    for row in peer_rows.values():
        forward_only = "ok (forward only: no backward on this device)"
        assert row["status"] in ("ok", forward_only, "not installed (pip install sparse-attention[peers])"), row
        if row["status"].startswith("ok"):
            assert row["version"] and row["settings"]
            assert row["forward_speedup"] == pytest.approx(dense["forward_ms"] / row["forward_ms"])
        if row["status"] == "ok":
            assert row["forward_backward_speedup"] == pytest.approx(
                dense["forward_backward_ms"] / row["forward_backward_ms"])
        if row["status"] == forward_only:
            assert "forward_backward_ms" not in row and row["backend"] == "peer:flex"
    out = capsys.readouterr().out
    assert "| 128 | 16 | 4:1 | float32 | peer:local-attention |" in out and "Peer libraries" in out


def test_table_of_json_without_keys_per_query():
    """Rows written before keys/query was recorded still render (derived from N and K)."""
    rows = [{"n": 32, "top_k": 4, "heads": "2:1", "dtype": "float32", "backend": b, "status": "ok",
             "ideal_ratio": 4.1} for b in ("dense_sdpa", "reference")]
    table = markdown_table({"machine": {}, "rows": rows})
    assert "| dense_sdpa | 16 |" in table and "| reference | 4 |" in table

"""Nothing silent: documented fallbacks say so once, backends say whether they can run here, and
the CPU kernel's build cache neither collides between installs nor hangs on a killed build."""

import importlib
import os
import time
import warnings

import pytest
import torch

import sparse_attention as sa
from sparse_attention.ops.kernels import cpu

backends_module = importlib.import_module("sparse_attention.ops.backends")


def test_float16_on_cpu_says_once_that_it_runs_on_the_reference(monkeypatch):
    monkeypatch.setattr(backends_module, "_SAID", set())
    q, k, v = (torch.randn(1, 2, 16, 8).half() for _ in range(3))
    idx = torch.zeros(1, 1, 16, 2, dtype=torch.long)
    with pytest.warns(RuntimeWarning, match="float16 on CPU runs on the reference backend"):
        _, backend = sa.sparse_attention(q, k, v, idx, return_backend=True)
    assert backend == "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second call says nothing
        sa.sparse_attention(q, k, v, idx)


def test_every_backend_says_whether_it_can_run_here():
    status = {b.name: b.status() for b in sa.backends()}
    assert status["reference"] == "available"
    assert status["cpu"] == ("available" if cpu.load_error() is None else f"unavailable: {cpu.load_error()}")
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        assert status["triton"].startswith("unavailable: ")


def test_cli_backends_prints_the_status(capsys):
    from sparse_attention.cli.main import main

    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    assert "reference (priority 0, available)" in out and "triton (priority 20, " in out


def test_the_build_name_depends_on_where_the_sources_are(monkeypatch, tmp_path):
    here = cpu._extension_name("generic")
    copy = tmp_path / "csrc"
    copy.mkdir()
    for path in cpu._CSRC.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    monkeypatch.setattr(cpu, "_CSRC", copy)
    assert cpu._extension_name("generic") != here  # same sources elsewhere: its own cache entry


def test_a_stale_build_lock_is_removed_and_a_fresh_one_reported(monkeypatch, tmp_path, capsys):
    lock = tmp_path / "lock"
    monkeypatch.setattr(cpu, "_build_lock", lambda level: lock)
    lock.touch()
    cpu.clear_stale_lock("generic")  # fresh: another process builds; wait for it
    assert lock.exists() and "another process is compiling" in capsys.readouterr().err
    old = time.time() - cpu.STALE_LOCK_S - 60
    os.utime(lock, (old, old))
    with pytest.warns(RuntimeWarning, match="stale CPU-kernel build lock"):
        cpu.clear_stale_lock("generic")
    assert not lock.exists()

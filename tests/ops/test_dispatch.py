"""One dispatch rule for every op: auto takes the best implementation that fits, a named one that
cannot run raises with its reason, documented fallbacks warn once and are recorded, and every op
has a reference that runs anywhere."""

import importlib
import os
import warnings

import pytest
import torch

import sparse_attention as sa
from sparse_attention.ops import all_ops
from sparse_attention.ops.attention import cpu

dispatch = importlib.import_module("sparse_attention.ops.dispatch")


@pytest.fixture
def fresh_record(monkeypatch):
    monkeypatch.setattr(dispatch, "_SAID", set())
    dispatch.reset_dispatch_record()
    yield
    dispatch.reset_dispatch_record()


def test_float16_on_cpu_says_once_that_it_runs_on_the_reference(fresh_record):
    q, k, v = (torch.randn(1, 2, 16, 8).half() for _ in range(3))
    idx = torch.zeros(1, 1, 16, 2, dtype=torch.long)
    with pytest.warns(RuntimeWarning, match="attention runs on 'reference', not 'cpu': float16 on CPU"):
        _, backend = sa.sparse_attention(q, k, v, idx, return_backend=True)
    assert backend == "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second call says nothing
        sa.sparse_attention(q, k, v, idx)
    record = sa.ops.dispatch_record()
    assert record["used"]["attention"]["reference"] == 2
    assert record["fallbacks"] == [{"op": "attention", "skipped": "cpu", "taken": "reference", "calls": 2,
                                    "reason": record["fallbacks"][0]["reason"]}]


def test_an_unavailable_implementation_is_a_recorded_fallback(fresh_record, monkeypatch):
    from sparse_attention.ops.kmeans import KMEANS_ASSIGN, assign

    cpu_impl = next(impl for impl in KMEANS_ASSIGN.implementations() if impl.name == "cpu")
    monkeypatch.setitem(KMEANS_ASSIGN._implementations, "cpu",
                        dataclass_replace(cpu_impl, unavailable=lambda: "no compiler here"))
    x, c = torch.randn(1, 5, 3), torch.randn(1, 2, 3)
    with pytest.warns(RuntimeWarning, match="kmeans_assign runs on 'reference', not 'cpu': no compiler here"):
        assign(x, c)
    with pytest.raises(ValueError, match="implementation='cpu' cannot run these inputs: no compiler here"):
        assign(x, c, implementation="cpu")
    assert sa.ops.dispatch_record()["fallbacks"][0]["reason"] == "no compiler here"


def dataclass_replace(obj, **changes):
    import dataclasses

    return dataclasses.replace(obj, **changes)


def test_inputs_an_implementation_does_not_take_are_no_fallback(fresh_record):
    q, k, v = (torch.randn(1, 2, 16, 8, dtype=torch.float64) for _ in range(3))
    idx = torch.zeros(1, 1, 16, 2, dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sa.sparse_attention(q, k, v, idx, return_backend=True)[1] == "reference"
    assert sa.ops.dispatch_record()["fallbacks"] == []


def test_errors_name_the_option_and_list_the_choices():
    q, k, v = (torch.randn(1, 2, 16, 8) for _ in range(3))
    idx = torch.zeros(1, 1, 16, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="unknown backend 'fast' for attention; expected one of: auto, triton, cpu"):
        sa.sparse_attention(q, k, v, idx, backend="fast")
    with pytest.raises(TypeError, match="backend must be a string"):
        sa.sparse_attention(q, k, v, idx, backend=3)


def test_forced_runs_auto_on_the_named_implementation():
    q, k, v = (torch.randn(1, 2, 16, 8) for _ in range(3))
    idx = torch.zeros(1, 1, 16, 2, dtype=torch.long)
    with dispatch.forced(attention="reference"):
        assert sa.sparse_attention(q, k, v, idx, return_backend=True)[1] == "reference"
        assert sa.sparse_attention(q, k, v, idx, backend="cpu", return_backend=True)[1] == "cpu"  # explicit wins
    assert sa.sparse_attention(q, k, v, idx, return_backend=True)[1] != "reference" or cpu.load_error()
    with pytest.raises(ValueError, match="unknown op 'atention'"):
        with dispatch.forced(atention="reference"):
            pass


def test_every_op_has_a_reference_that_runs_anywhere():
    names = {op.name for op in all_ops()}
    assert names == {"attention", "topk", "indexer_kl", "indexer_kl_from_target", "kmeans_seed", "kmeans_assign", "kmeans_sums", "compact_rows",
                     "cluster_rows", "lsh_rows"}
    for op in all_ops():
        reference = [impl for impl in op.implementations() if impl.priority == 0]
        assert len(reference) == 1 and reference[0].status() == "available", op.name


def test_every_backend_says_whether_it_can_run_here():
    status = {b.name: b.status() for b in sa.backends()}
    assert status["reference"] == "available"
    assert status["cpu"] == ("available" if cpu.load_error() is None else f"unavailable: {cpu.load_error()}")
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        assert status["triton"].startswith("unavailable: ")


def test_cli_backends_prints_every_op(capsys):
    from sparse_attention.cli.main import main

    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("attention (backend=auto")
    assert "  reference (priority 0, available)" in out and "  triton (priority 20, " in out
    assert "topk (scoring=auto" in out and "  fused (priority 10, " in out and "indexer_kl (implementation=" in out

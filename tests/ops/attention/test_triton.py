"""The Triton backend under the CPU interpreter (a subprocess: TRITON_INTERPRET must be set
before triton is imported)."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


def test_triton_backend_matches_reference_under_interpreter():
    here = Path(__file__).parent
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(here.parents[1])}
    result = subprocess.run([sys.executable, str(here / "triton_interpreter_cases.py")], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")


def test_triton_follows_the_nan_rule_under_interpreter():
    here = Path(__file__).parent
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(here.parents[1])}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "triton",
                             str(here.parents[1] / "selection" / "test_nan_rule.py")], env=env, capture_output=True,
                            text=True, timeout=600, cwd=here.parents[2])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and " failed" not in result.stdout


def test_triton_passes_the_fuzz_tests_under_interpreter():
    here = Path(__file__).parent
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(here.parents[1]), "SPARSE_ATTENTION_FUZZ_EXAMPLES": "30"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "backends",
                             str(here.parents[1] / "fuzz")], env=env, capture_output=True, text=True, timeout=900,
                            cwd=here.parents[2])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "1 passed" in result.stdout


def test_triton_declines_cpu_tensors_without_interpreter():
    import torch

    from sparse_attention import sparse_attention

    q = torch.randn(1, 2, 4, 16)
    k = v = torch.randn(1, 1, 4, 16)
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("interpreter mode accepts CPU tensors")
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        sparse_attention(q, k, v, torch.zeros(1, 1, 4, 1, dtype=torch.long), backend="triton")

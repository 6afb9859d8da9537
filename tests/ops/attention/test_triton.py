"""The Triton backend under the CPU interpreter (a subprocess: TRITON_INTERPRET must be set
before triton is imported), and its refusal of CPU tensors without it."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


#: What the interpreter run proves, and the tests that prove it (one subprocess: importing torch and
#: triton and warming the interpreter once, not three times):
#: - the layouts, GQA/MQA, duplicates, empty rows and float16 against the float64 reference;
#: - the fuzz test of every backend (random shapes, index sets, NaN/Inf, dtypes), 8 examples of
#:   lengths up to 64: the interpreter runs a Python loop per program (one per query and KV head),
#:   and the CPU backends get 60 examples of lengths up to 300 in the normal run;
#: - the NaN rule with the Triton backend on a shared selection (dsa) and a per-query-head one
#:   (topk). The other methods give one of these two layouts too and are left to the CPU backends'
#:   run of the same tests; so is the chunked scorer, which selects the same keys as the fused one
#:   (tests/ops/topk) before any attention backend runs.
INTERPRETER_RUN = {
    "tests/ops/attention/triton_interpreter_cases.py": "test_triton_interpreter",
    "tests/fuzz/test_fuzz_against_reference.py": "test_backends_match_the_float64_reference",
    "tests/selection/test_nan_rule.py": "triton and (dsa or topk) and not chunked",
}


def test_triton_passes_the_reference_fuzz_and_nan_tests_under_interpreter(tmp_path):
    root = Path(__file__).parents[3]
    env = {**os.environ, "TRITON_INTERPRET": "1", "SPARSE_ATTENTION_FUZZ_EXAMPLES": "8",
           "SPARSE_ATTENTION_FUZZ_MAX_LEN": "64"}
    keyword = " or ".join(f"({k})" for k in INTERPRETER_RUN.values())
    report = tmp_path / "junit.xml"
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", keyword,
                             f"--junitxml={report}", *INTERPRETER_RUN], env=env, capture_output=True, text=True,
                            timeout=900, cwd=root)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    cases = ElementTree.parse(report).getroot().iter("testcase")
    ran = {}  # file -> [(test, outcome)]
    for case in cases:
        outcome = "passed" if len(case) == 0 else case[0].tag  # failure, error or skipped
        ran.setdefault(case.get("classname").split(".")[-1], []).append((case.get("name"), outcome))
    for path in INTERPRETER_RUN:
        tests = ran.get(Path(path).stem, [])
        assert tests and all(outcome == "passed" for _, outcome in tests), (path, tests)
    nan_tests = [name for name, _ in ran["test_nan_rule"]]
    assert all("triton" in name for name in nan_tests) and any("dsa" in name for name in nan_tests)


def test_triton_declines_cpu_tensors_without_interpreter():
    import torch

    from sparse_attention import sparse_attention

    q = torch.randn(1, 2, 4, 16)
    k = v = torch.randn(1, 1, 4, 16)
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("interpreter mode accepts CPU tensors")
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        sparse_attention(q, k, v, torch.zeros(1, 1, 4, 1, dtype=torch.long), backend="triton")

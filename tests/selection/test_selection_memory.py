"""Every selection holds O(N K) memory: its peak stays within twice the index tensor it returns
plus the clustering state (a couple of float32 copies of q and k), never an N x N matrix.

Each method is measured in a fresh process: the resident-set high-water mark of a long test
process also counts what earlier tests left in the allocator (seen: +19 MiB for routing in a
full CI run against a fresh process).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sparse_attention.utils.memory import peak_memory_unavailable

MIB = 2**20
N = 2048
SRC = Path(__file__).resolve().parents[2] / "src"

MEASURE = """
import json, sys, torch
from sparse_attention.data.synthetic import gaussian_qkv
from sparse_attention.selection import select
from sparse_attention.utils.memory import peak_memory_bytes
method, params, n = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
q, k, _ = gaussian_qkv(batch=1, heads=4, kv_heads=2, head_dim=64, length=n, seed=0)
warm = {**params, **({"top_k": 16} if "top_k" in params else {})}
select(q[:, :, :128], k[:, :, :128], method, causal=True, **warm)  # kernel loaded, thread pools up
with torch.no_grad():
    selection, peak = peak_memory_bytes(lambda: select(q, k, method, causal=True, **params), "cpu")
print(json.dumps({"peak": peak, "index_bytes": selection.indices.numel() * selection.indices.element_size(),
                  "qk_elements": q.numel() + k.numel()}))
"""


@pytest.mark.skipif(peak_memory_unavailable("cpu") is not None, reason=str(peak_memory_unavailable("cpu")))
@pytest.mark.parametrize("method,params", [("local", {"window": 256}), ("topk", {"top_k": 256}),
                                           ("dsa", {"top_k": 256}), ("ssa", {}), ("routing", {}), ("lsh", {})])
def test_selection_peak_is_within_twice_its_output_plus_state(method, params):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", MEASURE, method, json.dumps(params), str(N)], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    m = json.loads(result.stdout.strip().splitlines()[-1])
    state = 2 * m["qk_elements"] * 4 + MIB  # normalised / projected copies of q and k, allocator slack
    assert m["peak"] <= 2 * m["index_bytes"] + state, (method, m["peak"] / MIB, m["index_bytes"] / MIB)
    assert m["peak"] < N * N * 4 * 4  # far below one N x N float32 matrix per head

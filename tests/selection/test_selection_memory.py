"""Every selection holds O(N K) memory: its peak stays within twice the index tensor it returns
plus the clustering state (a couple of float32 copies of q and k), never an N x N matrix."""

import pytest
import torch

from sparse_attention.data.synthetic import gaussian_qkv
from sparse_attention.selection import select
from sparse_attention.utils.memory import peak_memory_bytes, peak_memory_unavailable

MIB = 2**20
N = 2048


@pytest.mark.skipif(peak_memory_unavailable("cpu") is not None, reason=str(peak_memory_unavailable("cpu")))
@pytest.mark.parametrize("method,params", [("local", {"window": 256}), ("topk", {"top_k": 256}),
                                           ("dsa", {"top_k": 256}), ("ssa", {}), ("routing", {}), ("lsh", {})])
def test_selection_peak_is_within_twice_its_output_plus_state(method, params):
    q, k, _ = gaussian_qkv(batch=1, heads=4, kv_heads=2, head_dim=64, length=N, seed=0)
    select(q[:, :, :128], k[:, :, :128], method, causal=True, **{**params, **({"top_k": 16} if "top_k" in params
                                                                             else {})})  # warm: kernel loaded
    with torch.no_grad():
        selection, peak = peak_memory_bytes(lambda: select(q, k, method, causal=True, **params), "cpu")
    index_bytes = selection.indices.numel() * selection.indices.element_size()
    state = 2 * (q.numel() + k.numel()) * 4 + MIB  # normalised / projected copies of q and k, allocator slack
    assert peak <= 2 * index_bytes + state, (method, peak / MIB, index_bytes / MIB)
    assert peak < N * N * 4 * 4  # far below one N x N float32 matrix per head

"""Peak-memory measurement: meaningful on this machine, None with a reason where impossible."""

import gc

import pytest
import torch

from sparse_attention.utils import memory
from sparse_attention.utils.memory import peak_memory_bytes, peak_memory_unavailable

MIB = 2**20
needs_cpu_peak = pytest.mark.skipif(peak_memory_unavailable("cpu") is not None,
                                    reason=f"CPU peak memory unavailable: {peak_memory_unavailable('cpu')}")


def _touch(n_bytes):
    """Allocate and write ``n_bytes`` of float32, return a scalar (the tensor dies inside)."""
    t = torch.empty(n_bytes // 4, dtype=torch.float32)
    t.fill_(1.0)
    return float(t[-1])


@needs_cpu_peak
@pytest.mark.parametrize("size_mib", [64, 256])
def test_cpu_peak_matches_a_touched_allocation(size_mib):
    for _ in range(2):  # repeatable: the freed block left the resident set, so it is measured again
        result, peak = peak_memory_bytes(lambda: _touch(size_mib * MIB), "cpu")
        assert result == 1.0
        assert 0.95 * size_mib * MIB <= peak <= size_mib * MIB + 16 * MIB


@needs_cpu_peak
def test_cpu_peak_of_nothing_is_near_zero_and_result_is_returned():
    marker = object()
    result, peak = peak_memory_bytes(lambda: marker, "cpu")
    assert result is marker and 0 <= peak < 4 * MIB


@needs_cpu_peak
def test_cpu_peak_counts_many_small_blocks_after_heap_churn():
    # Blocks below the restored 32 MiB threshold live in the heap; freed ones must not hide
    # a later call's memory (malloc_trim hands them back before measuring).
    junk = [torch.ones(256 * 1024) for _ in range(64)]
    del junk
    blocks = 48
    _, peak = peak_memory_bytes(lambda: len([torch.ones(256 * 1024) for _ in range(blocks)]), "cpu")
    assert 0.9 * blocks * MIB <= peak <= blocks * MIB + 16 * MIB


@needs_cpu_peak
def test_larger_call_reports_more():
    _, small = peak_memory_bytes(lambda: _touch(32 * MIB), "cpu")
    _, large = peak_memory_bytes(lambda: _touch(128 * MIB), "cpu")
    assert large > 3 * small


@needs_cpu_peak
@pytest.mark.parametrize("enabled_before", [True, False])
def test_the_garbage_collector_is_off_during_the_call_and_restored(enabled_before):
    # A collection inside the call could free garbage of earlier calls and hide part of its peak.
    (gc.enable if enabled_before else gc.disable)()
    try:
        during, _ = peak_memory_bytes(gc.isenabled, "cpu")
        assert during is False and gc.isenabled() is enabled_before
    finally:
        gc.enable()


def test_unavailable_mechanism_gives_none_and_a_reason(monkeypatch, tmp_path):
    monkeypatch.setattr(memory, "_CLEAR_REFS", str(tmp_path / "missing" / "clear_refs"))
    reason = peak_memory_unavailable("cpu")
    assert isinstance(reason, str) and reason
    calls = []
    result, peak = peak_memory_bytes(lambda: calls.append(1) or "ran", "cpu")
    assert (result, peak, calls) == ("ran", None, [1])


def test_device_without_statistics_gives_none():
    assert "mps" in peak_memory_unavailable("mps")
    result, peak = peak_memory_bytes(lambda: 3, "mps")  # fn itself runs on CPU here
    assert (result, peak) == (3, None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_peak_matches_allocation():
    def alloc():
        t = torch.ones(64 * MIB // 4, device="cuda")
        return float(t.sum())

    _, peak = peak_memory_bytes(alloc, "cuda")
    assert 64 * MIB <= peak <= 80 * MIB


def test_saved_tensor_bytes_counts_the_saved_storages():
    x = torch.randn(1000, requires_grad=True)  # 4000 bytes
    w = torch.randn(1000)

    def forward():
        y = x * w  # saves w (for x's gradient)
        return (y * x).sum()  # saves y and x

    loss, saved = memory.saved_tensor_bytes(forward)
    assert saved == 3 * 4000
    loss.backward()
    assert torch.allclose(x.grad, 2 * w * x)
    with torch.no_grad():
        assert memory.saved_tensor_bytes(forward)[1] == 0

"""run_in_fresh_process: the call runs in a new process with glibc's mmap threshold fixed from its
start, and a peak measured there counts live memory, not heap blocks freed inside the call."""

import os

import pytest
import torch

from sparse_attention.utils.fresh_process import run_in_fresh_process
from sparse_attention.utils.memory import MMAP_THRESHOLD_ENV, peak_memory_bytes, peak_memory_unavailable

MIB = 2**20


def _child_facts(extra):
    return os.getpid(), os.environ.get(MMAP_THRESHOLD_ENV), torch.get_num_threads(), extra


def _raise(message):
    raise KeyError(message)


def _live_peak_of_staggered_blocks():
    """Peak of a call that holds at most 24 MiB at once: a and b (8 MiB each), a freed, then c
    (16 MiB, which a's hole cannot take). Heap-served, a's pages would stay resident: 32 MiB."""
    def call():
        a = torch.ones(2 * MIB)
        b = torch.ones(2 * MIB)
        del a
        c = torch.ones(4 * MIB)
        return float(b[-1] + c[-1])

    call()  # warm-up
    return peak_memory_bytes(call, "cpu")


def test_the_call_runs_in_another_process_with_the_threshold_and_the_thread_count():
    pid, threshold, threads, extra = run_in_fresh_process(_child_facts, {"x": 1})
    assert pid != os.getpid() and threshold == "65536" and extra == {"x": 1}
    assert threads == torch.get_num_threads()


def test_an_exception_in_the_call_is_raised_in_the_caller():
    with pytest.raises(KeyError, match="no such thing"):
        run_in_fresh_process(_raise, "no such thing")


@pytest.mark.skipif(peak_memory_unavailable("cpu") is not None, reason="CPU peak memory unavailable here")
def test_a_peak_measured_there_counts_what_is_live():
    result, peak = run_in_fresh_process(_live_peak_of_staggered_blocks)
    assert result == 2.0
    assert 24 * MIB * 0.95 <= peak <= 24 * MIB + 4 * MIB

import pytest
import torch

from sparse_attention.bench.peers import separate_compile_cache_under_isa_cap

separate_compile_cache_under_isa_cap()  # before anything is compiled (see its docstring)


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module of tiny training runs: on a shared 2-core machine the
    parallel regions of tiny ops mostly wait. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

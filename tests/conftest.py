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


def pytest_collection_finish(session):
    """Compile every op's C++ that the collected tests use before they start, two builds at a time
    (one compiler process each). Built on first use instead, they would compile one after another
    inside whichever test came first; a warm cache makes this a no-op."""
    if not session.items:
        return
    import sys

    from sparse_attention import ops  # noqa: F401  (registers every op's extension)
    from sparse_attention.ops.cpp.build import ISA_LEVELS, isa_level, prebuild

    levels = [isa_level()]
    if any("isa" in getattr(item, "fixturenames", ()) for item in session.items):  # the ISA-build tests
        levels += [level for level in ISA_LEVELS if level not in levels]
    prebuild(levels, workers=2, log=lambda line: sys.stderr.write(line + "\n"))

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
    """Compile the C++ that the collected tests use before they start, two builds at a time (two
    worker processes, one compiler job each): every op at the session's level, and each ISA build that a test of
    ``tests/ops/<op>/`` takes as its ``isa`` parameter. Built on first use instead, they would
    compile one after another inside whichever test came first; a warm cache makes this a no-op."""
    import os
    import sys
    from pathlib import Path

    if session.config.option.collectonly or not session.items:
        return
    if os.environ.get("PYTEST_XDIST_WORKER", "gw0") != "gw0":
        return  # one worker builds; another that needs a build meanwhile waits on its lock

    from sparse_attention import ops  # noqa: F401  (registers every op's extension)
    from sparse_attention.ops.cpp.build import EXTENSIONS, isa_level, prebuild

    builds = [(op, isa_level()) for op in EXTENSIONS]
    for item in session.items:
        level = getattr(getattr(item, "callspec", None), "params", {}).get("isa")
        op = Path(str(item.path)).parent.name
        if level is not None and op in EXTENSIONS:
            builds.append((op, level))
    prebuild(builds, workers=2, log=lambda line: sys.stderr.write(line + "\n"))

"""The builds of an op's C++ extension that a test needs: the session's own, and the other
instruction-set levels this CPU can run, as a test parameter. Both are checked when a test starts,
never while the tests are collected: the session compiles every build its collected tests need,
two at a time, between the two (tests/conftest.py)."""

import pytest

from sparse_attention.ops.cpp.build import ISA_LEVELS, isa_unavailable_reason


def require_build(extension):
    """Skip unless ``extension`` builds at the session's level."""
    error = extension.load_error()
    if error is not None:
        pytest.skip(f"{extension.op} CPU extension unavailable: {error}")


def require_level(extension, level):
    """Skip unless this CPU runs ``level`` and ``extension`` builds at it; return the level."""
    reason = isa_unavailable_reason(level)
    if reason is not None:
        pytest.skip(reason)
    if extension.load_error(level) is not None:
        pytest.skip(f"{extension.op} CPU extension for {level!r} unavailable: {extension.load_error(level)}")
    return level


#: The levels besides the session's own (``native``), which the rest of each op's tests cover.
OTHER_LEVELS = [level for level in ISA_LEVELS if level != "native"]
#: For C++ whose only instruction-set split is simd16.h's lanes (AVX-512 / AVX2 / none): on a CPU
#: that runs ``avx512`` the native build already has the AVX-512 lanes, so ``avx512`` would test
#: the same code again; ``avx2`` and ``generic`` are the other two paths. (Ops with paths of their
#: own for AVX512-BF16 or AMX, attention and topk, test every level.)
LANE_LEVELS = ["avx2", "generic"]
#: For portable C++ with no instruction-set split at all: one other build, as a smoke test.
PORTABLE_LEVELS = ["generic"]

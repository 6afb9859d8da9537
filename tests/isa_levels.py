"""The instruction-set builds of an op's C++ extension that this CPU can run, as a test parameter."""

import pytest

from sparse_attention.ops.cpp.build import ISA_LEVELS, isa_unavailable_reason


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

"""The per-op C++ build: one cache entry per op, level and content (shared by installs of the same
sources, separate for edited ones), and a build lock left by a killed build neither hangs nor hides."""

import os
import time

import pytest

from sparse_attention.ops.attention import cpu as attention_cpu
from sparse_attention.ops.cpp import build
from sparse_attention.ops.kmeans import cpu as kmeans_cpu


def _copy(extension, tmp_path):
    """The extension's op sources copied elsewhere, as a second install would hold them."""
    copy = tmp_path / "csrc"
    copy.mkdir()
    for path in extension.csrc.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    return build.CppExtension(extension.op, copy)


def test_the_build_name_depends_on_content_not_on_where_the_sources_are(tmp_path):
    copy = _copy(attention_cpu.EXTENSION, tmp_path)
    assert copy.name("generic") == attention_cpu.EXTENSION.name("generic")  # a wheel and a clone share a build
    (copy.csrc / "attention_cpu.cpp").write_text((copy.csrc / "attention_cpu.cpp").read_text() + "\n// edit\n")
    assert copy.name("generic") != attention_cpu.EXTENSION.name("generic")


def test_each_op_and_level_has_its_own_build():
    names = {ext.name(level) for ext in (attention_cpu.EXTENSION, kmeans_cpu.EXTENSION) for level in build.ISA_LEVELS}
    assert len(names) == 2 * len(build.ISA_LEVELS)
    assert attention_cpu.EXTENSION.name("avx2").startswith("sparse_attention_attention_avx2_")


def test_an_edited_op_leaves_the_other_ops_builds_alone(tmp_path):
    copy = _copy(kmeans_cpu.EXTENSION, tmp_path)
    (copy.csrc / "kmeans_cpu.cpp").write_text("// edited\n")
    assert copy.name("native") != kmeans_cpu.EXTENSION.name("native")
    assert attention_cpu.EXTENSION.name("native") == build.CppExtension("attention", attention_cpu.EXTENSION.csrc).name(
        "native")


def test_a_stale_build_lock_is_removed_and_a_fresh_one_reported(tmp_path, capsys):
    lock = tmp_path / "lock"
    lock.touch()
    build.clear_stale_lock(lock)  # fresh: another process builds; wait for it
    assert lock.exists() and "another process is compiling" in capsys.readouterr().err
    old = time.time() - build.STALE_LOCK_S - 60
    os.utime(lock, (old, old))
    with pytest.warns(RuntimeWarning, match="stale CPU-kernel build lock"):
        build.clear_stale_lock(lock)
    assert not lock.exists()


def test_prebuild_reports_a_failed_build_with_its_reason_and_skips_built_ones(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "cache"))  # nothing built there
    monkeypatch.setenv("CXX", "false")  # a compiler that fails (the workers inherit the environment)
    lines = []
    failed = build.prebuild([("compact", "generic"), ("compact", "generic")], log=lines.append)
    assert list(failed) == ["compact/generic"] and "build failed" in failed["compact/generic"]
    assert len(lines) == 1 and "failed to compile the compact/generic CPU kernel" in lines[0]
    monkeypatch.setattr(build.CppExtension, "is_built", lambda self, level: True)
    assert build.prebuild([("compact", "generic")], log=lines.append) == {} and len(lines) == 1

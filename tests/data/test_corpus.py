"""The standard-library docstring corpus: content, order, exclusions, determinism."""

import pytest

from sparse_attention.data.corpus import (
    EXCLUDED_DIRS,
    SEPARATOR,
    file_docstrings,
    stdlib_dir,
    stdlib_files,
    stdlib_text,
)


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def fake_stdlib(tmp_path):
    _write(tmp_path / "b.py", '"""Module b."""\n\ndef f():\n    """Function f\n    of b."""\n')
    _write(tmp_path / "a.py", 'class A:\n    """Class A."""\n\n    def m(self):\n        """Method m."""\n')
    _write(tmp_path / "pkg" / "__init__.py", '"""Package."""\n')
    _write(tmp_path / "pkg" / "test" / "x.py", '"""Excluded test."""\n')
    _write(tmp_path / "site-packages" / "y.py", '"""Excluded third party."""\n')
    _write(tmp_path / "broken.py", '"""Never read."""\ndef (:\n')
    _write(tmp_path / "nodoc.py", "x = 1\n")
    return tmp_path


def test_fake_tree_order_and_exclusions(fake_stdlib):
    names = [p.relative_to(fake_stdlib).as_posix() for p in stdlib_files(fake_stdlib)]
    assert names == ["a.py", "b.py", "broken.py", "nodoc.py", "pkg/__init__.py"]
    # Source order inside a file, indentation cleaned; unparsable files give nothing.
    assert file_docstrings(fake_stdlib / "b.py") == ["Module b.", "Function f\nof b."]
    assert file_docstrings(fake_stdlib / "broken.py") == []
    expected = SEPARATOR.join(["Class A.", "Method m.", "Module b.", "Function f\nof b.", "Package."])
    assert stdlib_text(10_000, root=fake_stdlib) == expected
    assert stdlib_text(12, root=fake_stdlib) == expected[:12]
    assert stdlib_text(10_000, root=fake_stdlib, min_chars=9) == SEPARATOR.join(["Method m.", "Module b.",
                                                                                  "Function f\nof b."])


def test_real_stdlib_text_is_deterministic_english():
    text = stdlib_text(20_000)
    assert len(text) == 20_000  # the corpus is far longer than this
    assert text == stdlib_text(20_000)
    assert stdlib_text(5_000) == text[:5_000]
    words = text.lower().split()
    assert words.count("the") > len(words) / 100  # prose, not code
    relative = [p.relative_to(stdlib_dir()) for p in stdlib_files()]
    assert relative == sorted(relative, key=lambda p: p.as_posix())
    assert all(p.suffix == ".py" for p in relative)
    assert not any(part in EXCLUDED_DIRS for p in relative for part in p.parts[:-1])


@pytest.mark.parametrize("bad,error", [(0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError)])
def test_rejects_bad_length(bad, error):
    with pytest.raises(error, match="max_chars must be an int >= 1"):
        stdlib_text(bad)

"""Offline English text: the docstrings of the Python standard library.

Every machine that runs this package has CPython's standard library sources, and their
docstrings are English prose written by people (module overviews, class and function
descriptions, argument explanations), with some code examples mixed in. That makes them
a corpus that needs no download, for capturing real attention patterns or training small
language models.

Source and order (deterministic for a given Python version):

* the directory ``sysconfig.get_paths()["stdlib"]``, every ``*.py`` file below it, in
  sorted order of the POSIX relative path;
* skipped: test suites (any directory named ``test``, ``tests``, ``idle_test`` or starting
  with ``test_``), third-party and build directories (``site-packages``, ``dist-packages``,
  ``lib-dynload``, ``config-*``, ``__pycache__``) and a few packages with little or
  generated prose (``idlelib``, ``lib2to3``, ``turtledemo``, ``ensurepip``, ``pydoc_data``,
  ``encodings``, ``__phello__``) and ``_sysconfigdata_*`` files;
* per file, the docstrings of the module, classes and functions (``ast.get_docstring``,
  i.e. indentation cleaned) in source order; files that do not parse are skipped.

The text differs between Python versions; record ``sys.version`` next to any result.
"""

from __future__ import annotations

import ast
import os
import sysconfig
import tokenize
from collections.abc import Iterator
from pathlib import Path

from ..utils.checks import check_int

#: Directory names skipped anywhere in the tree.
EXCLUDED_DIRS = frozenset({
    "test", "tests", "idle_test", "idlelib", "lib2to3", "turtledemo", "ensurepip", "pydoc_data", "encodings",
    "__phello__", "site-packages", "dist-packages", "lib-dynload", "__pycache__",
})
#: Separator placed between two docstrings.
SEPARATOR = "\n\n"
_DOC_NODES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def stdlib_dir() -> Path:
    """The directory of the running interpreter's standard library sources."""
    return Path(sysconfig.get_paths()["stdlib"])


def _excluded_dir(name: str) -> bool:
    return name in EXCLUDED_DIRS or name.startswith(("test_", "config-"))


def stdlib_files(root: Path | None = None) -> list[Path]:
    """Source files of the corpus, sorted by POSIX relative path (see the module docstring)."""
    root = stdlib_dir() if root is None else Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"standard library directory not found: {root}")
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Prune excluded directories here: site-packages alone can hold 100k files.
        dirnames[:] = [d for d in dirnames if not _excluded_dir(d)]
        files += [Path(dirpath) / f for f in filenames if f.endswith(".py") and not f.startswith("_sysconfigdata_")]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def file_docstrings(path: Path) -> list[str]:
    """Module, class and function docstrings of one source file, in source order.

    Returns an empty list when the file cannot be read or parsed (some stdlib files hold
    deliberately broken code or an unusual encoding).
    """
    try:
        with tokenize.open(path) as handle:  # honours the file's coding declaration
            tree = ast.parse(handle.read(), filename=str(path))
    except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
        return []
    found = []
    for node in ast.walk(tree):
        if isinstance(node, _DOC_NODES):
            doc = ast.get_docstring(node, clean=True)
            if doc and doc.strip():
                found.append((getattr(node, "lineno", 0), doc.strip()))
    found.sort(key=lambda item: item[0])  # ast.walk is breadth-first; restore source order
    return [doc for _, doc in found]


def iter_stdlib_docstrings(root: Path | None = None) -> Iterator[tuple[str, str]]:
    """``(relative path, docstring)`` for every docstring of the corpus, in corpus order."""
    root = stdlib_dir() if root is None else Path(root)
    for path in stdlib_files(root):
        rel = path.relative_to(root).as_posix()
        for doc in file_docstrings(path):
            yield rel, doc


def stdlib_text(max_chars: int, *, root: Path | None = None, min_chars: int = 1) -> str:
    """The first ``max_chars`` characters of the standard-library docstring corpus.

    Args:
        max_chars: length limit of the result (the corpus is a few MB; the result is
            shorter only when the corpus runs out).
        root: the standard library directory (default: the running interpreter's).
        min_chars: skip docstrings shorter than this (e.g. 40 drops one-line stubs).
    Returns:
        Docstrings joined by a blank line, cut at ``max_chars``. Deterministic for a given
        Python version. Files are parsed lazily, so a short text is cheap.
    """
    check_int("max_chars", max_chars)
    check_int("min_chars", min_chars)
    parts: list[str] = []
    total = 0
    for _, doc in iter_stdlib_docstrings(root):
        if len(doc) < min_chars:
            continue
        parts.append(doc)
        total += len(doc) + len(SEPARATOR)
        if total >= max_chars:
            break
    return SEPARATOR.join(parts)[:max_chars]

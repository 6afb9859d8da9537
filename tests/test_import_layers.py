"""The package's import graph against its layer order: imports only go down, and no module cycle.

Every ``import`` is read from the source (module level and inside functions alike: a lazy import
is still a dependency). The order is the one README's Layout section describes; a folder may
import its own modules and any folder of a lower layer.
"""

import ast
from pathlib import Path

import sparse_attention

PACKAGE = Path(sparse_attention.__file__).parent

#: Top-level modules and folders, each with its layer (higher layers import lower ones only).
LAYERS = {
    "utils": 0, "_optional": 0,
    "ops": 1, "data": 1,
    "selection": 2,
    "layers": 3, "api": 3,
    "models": 4,
    "training": 5, "report": 5,
    "bench": 6, "experiments": 6, "integrations": 6,
    "cli": 7,
    "__main__": 8,
}
#: The package's ``__init__`` re-exports the public API and may import any layer below cli.
ROOT_MAX_LAYER = LAYERS["layers"]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Modules of this package that ``path`` imports (absolute names)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("sparse_attention"):
                found.add(target)
                # `from . import x` / `from .pkg import mod`: the imported names may be modules
                found.update(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("sparse_attention"))
    return found


def graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports. A module importing its own enclosing package
    (``from . import x`` reaching ``__init__``) is left out: that is how Python packages work,
    not a dependency of a layer on itself."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {t for t in imports_of(path) if t in modules and t != name and not name.startswith(t + ".")}
            for name, path in modules.items()}


def top(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_top_level_part_has_a_layer():
    tops = {top(name) for name in graph()} - {""}
    assert tops <= set(LAYERS), f"give these a layer in LAYERS and in README's Layout: {sorted(tops - set(LAYERS))}"


def test_imports_only_go_down():
    upward = []
    for name, targets in graph().items():
        src = top(name)
        limit = ROOT_MAX_LAYER if src == "" else LAYERS.get(src, 0)
        for target in targets:
            dst = top(target)
            if dst and dst != src and LAYERS[dst] >= (limit + 1 if src == "" else limit):
                upward.append(f"{name} -> {target}")
    assert not upward, "imports that go up (or sideways) the layer order:\n" + "\n".join(sorted(upward))


def test_no_module_cycles():
    edges = graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                path = stack + [node]
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [node])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    assert not cycles, "module cycles:\n" + "\n".join(cycles)

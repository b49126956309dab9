"""The modules of hscl.losses import each other strictly downward: no cycle, also none through an import inside a
function, read from the source with ast (not from what happens to be imported)."""

from __future__ import annotations

import ast
from pathlib import Path

import hscl.losses

PACKAGE = "hscl.losses"
ROOT = Path(hscl.losses.__file__).parent
MODULES = sorted(path.stem for path in ROOT.glob("*.py"))


def _imports(module: str) -> set[str]:
    """The modules of the package that ``module`` imports anywhere in its source (``__init__`` for the package)."""
    tree = ast.parse((ROOT / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            base = node.module
            names = [f"{base}.{alias.name}" if base == PACKAGE else base for alias in node.names]
        else:
            continue
        for name in names:
            if name == PACKAGE:
                found.add("__init__")
            elif name.startswith(PACKAGE + "."):
                sub = name[len(PACKAGE) + 1 :].split(".")[0]
                found.add(sub if sub in MODULES else "__init__")  # a name of the package: its __init__
    found.discard(module)
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_the_finder_sees_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_hscl_losses_has_no_import_cycle():
    graph = {module: _imports(module) for module in MODULES}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_layers():
    """The sets and the checks import no other module of the package; the kernels no module above them; only
    ``__init__`` imports the registry."""
    graph = {module: _imports(module) for module in MODULES}
    assert graph["sets"] == set() and graph["_checks"] == set() and graph["pairs"] == set()
    assert graph["kernel"] <= {"sets", "pairs", "buffers", "symmetric"}
    assert graph["generic"] <= {"sets", "pairs", "buffers", "_checks"}
    assert graph["core"] <= {"sets", "kernel", "generic", "buffers", "_checks", "_compiled"}
    assert [module for module in MODULES if "registry" in graph[module]] == ["__init__"]

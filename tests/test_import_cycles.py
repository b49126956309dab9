"""No import cycles in hscl: the import graph of every module under src/hscl, read with :mod:`ast`.

Every ``import`` statement counts, wherever it stands: at module level, inside a function or a class, under
``if TYPE_CHECKING:``. ``import a.b`` and ``from a.b import c`` are edges to ``a.b``, or to the module
``a.b.c`` when ``c`` is one (``from pkg import submodule``); relative imports are resolved against the
importing module's package. Only edges between hscl modules are kept. Importing ``a.b.c`` also runs the
``__init__`` of ``a`` and ``a.b``; those implicit edges are not counted (a package's ``__init__`` importing
its own submodules would otherwise always close a cycle), as in import-linter.

Run as a script (``python tests/test_import_cycles.py``) it prints every cycle in the tree (none is allowed).
"""

from __future__ import annotations

import ast
import sys
from collections import deque
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def module_name(path: Path, root: Path = SRC) -> str:
    """``src/hscl/a/b.py`` -> ``hscl.a.b``; ``src/hscl/a/__init__.py`` -> ``hscl.a``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def find_modules(root: Path = SRC, package: str = "hscl") -> dict[str, Path]:
    """Every module of ``package`` under ``root``, by dotted name."""
    return {module_name(p, root): p for p in sorted((root / package).rglob("*.py"))}


def _resolve_from(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    """The absolute module a ``from X import ...`` statement names (``X`` resolved when relative)."""
    if node.level == 0:
        return node.module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _nearest_module(name: str, modules: dict[str, Path]) -> str | None:
    """``name`` if it is a module, else its longest prefix that is (``pkg.mod.func`` -> ``pkg.mod``)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def imports_of(module: str, modules: dict[str, Path]) -> set[str]:
    """The hscl modules ``module`` imports anywhere in its source."""
    path = modules[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = _resolve_from(node, module, path.name == "__init__.py")
            # ``from pkg import sub`` imports the module pkg.sub when there is one, else a name of pkg
            targets = [
                f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source for alias in node.names
            ]
        else:
            continue
        for target in targets:
            resolved = _nearest_module(target, modules)
            if resolved is not None and resolved != module:
                found.add(resolved)
    return found


def import_graph(root: Path = SRC, package: str = "hscl") -> dict[str, set[str]]:
    """Module -> the modules it imports, for every module of ``package``."""
    modules = find_modules(root, package)
    return {m: imports_of(m, modules) for m in modules}


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative), each a cycle set."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[set[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(component)
    return components


def shortest_cycle(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """One shortest cycle through the component's first module (by name), as ``[a, b, ..., a]``."""
    start = min(component)
    parent: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(graph[node] & component):
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [*reversed(path), start]
            if child not in parent:
                parent[child] = node
                queue.append(child)
    raise ValueError(f"component: {sorted(component)} holds no cycle through {start}")


def describe(graph: dict[str, set[str]], component: set[str]) -> str:
    """The component's modules and one cycle through them, for a failure message."""
    return f"{len(component)} modules {sorted(component)}; e.g. {' -> '.join(shortest_cycle(graph, component))}"


def test_no_import_cycles():
    graph = import_graph()
    cycles = [describe(graph, c) for c in strongly_connected(graph)]
    assert not cycles, "import cycles in hscl:\n" + "\n".join(cycles)


def test_dataset_specs_sit_below_the_readers_and_the_registry_on_top():
    graph = import_graph()
    assert not {m for m in graph["hscl.data.images.specs"] if m.startswith("hscl.data")}
    # no reader calls back up into the registry: within hscl.data only the package's __init__ imports it
    importers = {m for m, targets in graph.items() if "hscl.data.images.registry" in targets}
    assert {m for m in importers if m.startswith("hscl.data")} == {"hscl.data.images"}


def _tiny_package(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_graph_counts_function_level_relative_and_submodule_imports(tmp_path):
    root = _tiny_package(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg.a import f\n",
            "pkg/a.py": "def f():\n    from . import b\n    return b\n",
            "pkg/b.py": "import os\nfrom pkg.sub import c\n",
            "pkg/sub/__init__.py": "",
            "pkg/sub/c.py": "from ..a import f\nimport pkg.sub\n",
            "pkg/d.py": "from pkg import sub\nfrom pkg.a import f as g\n",
        },
    )
    graph = import_graph(root, "pkg")
    assert graph == {
        "pkg": {"pkg.a"},
        "pkg.a": {"pkg.b"},  # inside a function, relative, a submodule named in ``from . import``
        "pkg.b": {"pkg.sub.c"},  # os is not a module of pkg
        "pkg.sub": set(),
        "pkg.sub.c": {"pkg.a", "pkg.sub"},  # two levels up; a plain ``import`` of a package
        "pkg.d": {"pkg.sub", "pkg.a"},  # a sub-package; a function of pkg.a
    }
    components = strongly_connected(graph)
    assert components == [{"pkg.a", "pkg.b", "pkg.sub.c"}]
    assert shortest_cycle(graph, components[0]) == ["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]


def test_two_separate_cycles_are_both_found():
    graph = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c", "a"}, "f": {"a"}}
    assert sorted(map(sorted, strongly_connected(graph))) == [["a", "b"], ["c", "d", "e"]]
    assert shortest_cycle(graph, {"c", "d", "e"}) == ["c", "d", "e", "c"]


if __name__ == "__main__":
    full = import_graph()
    found = strongly_connected(full)
    for comp in sorted(found, key=min):
        print("CYCLE    " + describe(full, comp))
    print(f"{len(full)} modules, {sum(map(len, full.values()))} imports, {len(found)} cycles")
    sys.exit(1 if found else 0)

"""The modules of hscl.losses import each other strictly downward: the sets and the checks at the bottom, the
kernels above them, the core above those, the methods and the registry on top; no cycle, also none through an
import inside a function (the ast import graph of tests/test_import_cycles.py)."""

from __future__ import annotations

from test_import_cycles import import_graph, strongly_connected

PACKAGE = "hscl.losses"


def _losses_graph() -> dict[str, set[str]]:
    """Module of hscl.losses (short name, ``__init__`` for the package) -> the modules of hscl.losses it imports."""

    def short(name: str) -> str:
        return "__init__" if name == PACKAGE else name.removeprefix(PACKAGE + ".")

    inside = {m: targets for m, targets in import_graph().items() if m == PACKAGE or m.startswith(PACKAGE + ".")}
    return {short(m): {short(t) for t in targets if t in inside} for m, targets in inside.items()}


def test_hscl_losses_has_no_import_cycle():
    assert strongly_connected(_losses_graph()) == []


def test_the_layers():
    graph = _losses_graph()
    assert graph["sets"] == graph["_checks"] == graph["pairs"] == graph["buffers"] == graph["_compiled"] == set()
    assert graph["symmetric"] <= {"sets", "pairs", "buffers"}
    assert graph["kernel"] <= {"sets", "pairs", "buffers", "symmetric"}
    assert graph["generic"] <= {"sets", "pairs", "buffers", "_checks"}
    assert graph["core"] <= {"sets", "kernel", "generic", "buffers", "_checks", "_compiled"}
    assert not any(graph[m] & {"core", "base", "registry"} for m in ("sets", "pairs", "kernel", "symmetric"))
    assert [module for module in graph if "registry" in graph[module]] == ["__init__"]

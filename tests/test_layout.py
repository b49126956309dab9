"""The codebase's own rules, checked on the tree: the layout that docs/development.md describes is the one on
disk, a private name is used only inside its own package, modules and functions stay short, and code and docs
speak of what the code does (no project history, no file outside the repository)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = SRC / "hscl"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _layout_block() -> list[str]:
    text = (ROOT / "docs" / "development.md").read_text()
    section = text.split("## Layout", 1)[1]
    return section.split("```text\n", 1)[1].split("```", 1)[0].splitlines()


def layout_paths(lines: list[str]) -> set[str]:
    """The paths a layout block names: ``name/`` opens a folder at its indentation, ``name.py`` a file in the
    folder above it; a line's names are the words before its first run of two spaces, and a line that starts
    past column 20 continues the description of the line above."""
    paths, stack = set(), []
    for line in lines:
        indent = len(line) - len(line.lstrip(" "))
        if not line.strip() or indent >= 20:
            continue
        level = indent // 2
        names = re.split(r"\s{2,}", line.strip(), maxsplit=1)[0].split()
        stack = stack[:level]
        for name in names:
            if not re.fullmatch(r"[\w./]+/|\w+\.py", name):
                raise ValueError(f"docs/development.md layout: {name!r} is neither a folder/ nor a module.py")
            path = "/".join([*stack, name.rstrip("/")])
            paths.add(path + ("/" if name.endswith("/") else ""))
        if len(names) == 1 and names[0].endswith("/"):
            stack.append(names[0].rstrip("/"))
    return paths


def test_layout_parser_reads_nesting_and_continuations():
    block = ["src/hscl/", "  a.py               one", "                       more", "  pkg/", "    b.py c.py", "x/"]
    assert layout_paths(block) == {
        "src/hscl/",
        "src/hscl/a.py",
        "src/hscl/pkg/",
        "src/hscl/pkg/b.py",
        "src/hscl/pkg/c.py",
        "x/",
    }


def test_development_layout_is_the_tree():
    listed = layout_paths(_layout_block())
    missing = sorted(p for p in listed if not (ROOT / p).exists())
    assert not missing, f"docs/development.md names what is not in the tree: {missing}"
    modules = {str(p.relative_to(ROOT)) for p in _modules() if p.name not in ("__init__.py", "__main__.py")}
    packages = {str(p.parent.relative_to(ROOT)) + "/" for p in _modules() if p.name == "__init__.py"}
    unlisted = sorted((modules | packages) - listed)
    assert not unlisted, f"docs/development.md's layout does not list: {unlisted}"


def _package_of(module: str) -> str:
    path = SRC.joinpath(*module.split("."))
    return module if (path / "__init__.py").exists() else module.rsplit(".", 1)[0]


def private_name_uses(path: Path) -> list[str]:
    """``from hscl.a.b import _name`` where the importing module is outside the package of ``hscl.a.b``."""
    module = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
    own = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hscl") and not node.level:
            home = _package_of(node.module)
            for alias in node.names:
                private = alias.name.startswith("_") and not alias.name.startswith("__")
                if private and own != home and not own.startswith(home + "."):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.module}.{alias.name}")
    return found


def test_private_names_stay_in_their_package(tmp_path):
    uses = [use for path in _modules() for use in private_name_uses(path)]
    assert not uses, "private names used outside their package:\n" + "\n".join(uses)
    # the check finds one when there is one
    (tmp_path / "hscl" / "cli").mkdir(parents=True)
    probe = PACKAGE / "cli" / "_layout_probe.py"
    try:
        probe.write_text("from hscl.losses.core import _x\n")
        assert private_name_uses(probe) == ["src/hscl/cli/_layout_probe.py:1 hscl.losses.core._x"]
    finally:
        probe.unlink()


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_and_function_lengths(path):
    lines = path.read_text().splitlines()
    assert len(lines) <= MAX_MODULE_LINES, f"{path.name}: {len(lines)} lines (at most {MAX_MODULE_LINES})"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
                body = body[1:]  # the docstring does not count
            if body:
                length = body[-1].end_lineno - body[0].lineno + 1
                assert length <= MAX_FUNCTION_LINES, f"{path.name}:{node.lineno} {node.name}: body of {length} lines"


#: what code and docs must not say: the project's history, or files outside the repository
HISTORY = re.compile(r"\b[Ii]ssues? #?\d+\b|\.\./shared/|(?<![\w/])(LOSSES|ARCHITECTURE|STYLE|DEVELOPERS)\.md\b")


def _texts() -> list[Path]:
    roots = [SRC, ROOT / "tests", ROOT / "benchmarks", ROOT / "docs"]
    files = [p for root in roots for p in root.rglob("*") if p.suffix in (".py", ".md", ".yaml", ".sh")]
    return sorted(p for p in [*files, ROOT / "README.md", ROOT / "Makefile"] if "__pycache__" not in p.parts)


def test_code_and_docs_speak_of_the_code_not_its_history():
    found = []
    for path in _texts():
        if path == Path(__file__).resolve():
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if HISTORY.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    assert not found, "\n".join(found)

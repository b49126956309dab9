"""README.md and docs/getting-started.md say the same about the two commands, the set-up and the extras."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _section(text: str, start: str) -> str:
    """The paragraph of ``text`` that begins with ``start``, joined into one line."""
    index = text.index(start)
    end = text.find("\n\n", index)
    return " ".join(text[index : end if end >= 0 else None].split())


def test_readme_and_getting_started_agree():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = (ROOT / "docs" / "getting-started.md").read_text(encoding="utf-8")
    commands = re.compile(r"^make (?:demo|test) .*$", re.M)
    assert commands.findall(readme) == commands.findall(start) != []
    assert _section(readme, "The extras:") == _section(start, "The extras:")
    install = re.compile(r"```bash\n(pip install -e .*?)```", re.S)
    assert install.findall(readme) == install.findall(start) != []
    for text in (readme, start):
        setup = " ".join(text.split())
        for needed in ("dataset-fashion-mnist", "chromium-driver", "postgresql", "KaTeX", "make gpu-check"):
            assert needed in setup, needed


#: the widest code line the site shows without horizontal scrolling (Material, a laptop screen)
CODE_WIDTH = 100


def _fenced_lines(path: Path):
    """(line number, line) of every line inside a fenced code block of a Markdown file."""
    fence = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        marker = re.match(r"^\s*(```|~~~)", line)
        if marker and (fence is None or marker.group(1) == fence):
            fence = marker.group(1) if fence is None else None
        elif fence is not None:
            yield number, line


def test_code_lines_in_the_docs_fit_without_scrolling():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    wide = [
        f"{page.relative_to(ROOT)}:{number}: {len(line)} characters"
        for page in pages
        for number, line in _fenced_lines(page)
        if len(line) > CODE_WIDTH
    ]
    assert wide == []
    assert sum(1 for page in pages for _ in _fenced_lines(page)) > 200  # the blocks were found

"""Render the measured numbers of README.md and docs/ from the files under results/, so a page cannot drift.

A page marks each results table it shows; the block between the markers is rewritten from the file:

    <!-- results: results/table1-quick/machine-c/table1.md columns="method; kNN top-1 (%)" -->
    | method | kNN top-1 (%) |
    ...
    <!-- /results -->

The first word is the source, relative to the repository root. A Markdown file (``.md``, e.g. an experiment's
table or a benchmark's raw output) gives its ``table=N``-th table (1 = the first; tables inside code fences
count; ``table=N,M`` joins the rows of tables with one header), verbatim unless ``columns=`` picks and orders
columns by their header text (separated by ``;``). A CSV file gives a Markdown table of its columns (all, or
``columns=`` by CSV header), its numbers rounded to ``digits=N`` decimals when given (verbatim otherwise).

A wall-clock time and peak memory quoted in a sentence come from a ``/usr/bin/time -v`` log, inline:

    <!-- time: results/schane-pretrained/run.log -->16 min 57 s, peak memory 2.64 GiB<!-- /time -->

A table of numbers that is not a measurement (an option's defaults, the paper's published values) says so on
the line before it: ``<!-- not-results: the paper's published values -->``. Files the pages name but which
are added later by hand (the ``/usr/bin/time -v`` logs of ``make demo`` and ``make test``) are listed in
:data:`EXPECTED`.

``python docs/render_results.py`` (``make render``) rewrites every block in place; ``--check`` only lists the
blocks that differ from their files and exits with status 1 when there is one. The MkDocs hook runs the same
check, so ``make docs`` fails on a stale page; ``tests/test_rendered.py`` fails on one too.
"""

from __future__ import annotations

import csv
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: files under results/ the pages name before they exist, with what each will hold
EXPECTED = {
    "results/timing/make-demo.txt": "`/usr/bin/time -v make demo` in a fresh clone",
    "results/timing/make-test.txt": "`/usr/bin/time -v make test` in a fresh clone",
}

_BLOCK = re.compile(r"^<!-- results: (?P<spec>.*?) -->\n(?P<body>.*?)^<!-- /results -->$", re.S | re.M)
_TIME = re.compile(r"<!-- time: (?P<spec>.*?) -->(?P<body>.*?)<!-- /time -->", re.S)
_NOT_RESULTS = re.compile(r"^<!-- not-results: (?P<reason>\S.*?) -->$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_FENCED = re.compile(r"^\s*(```|~~~).*?^\s*\1[^\n]*$", re.S | re.M)
_SPAN = re.compile(r"`[^`\n]+`")
_ALIGN = re.compile(r"^\|(\s*:?-+:?\s*\|)+$")
_CELL_SPLIT = re.compile(r"(?<!\\)\|")
# a decimal number that is not part of a longer token; arXiv identifiers (2209.00078) are not measurements
_DECIMAL = re.compile(r"(?<![\w.])\d+\.\d+(?![\w.])")
_ARXIV = re.compile(r"arXiv[ :]?\d{4}\.\d{4,5}(v\d+)?", re.I)
_RESULTS_PATH = re.compile(r"(?<![\w/.-])(?:\.\./)*(results/[\w.=+-]+(?:/[\w.=+-]+)*/?)")
_OPTIONS = {"results": ("table", "columns", "digits"), "time": ()}


class RenderError(ValueError):
    """A marker names a missing file, a missing table or column, or an option that does not exist."""


@dataclass
class Table:
    """One Markdown table: its raw lines, header cells, alignment cells and rows of cells."""

    lines: list[str]
    header: list[str]
    align: list[str]
    rows: list[list[str]]

    def text(self) -> str:
        return "\n".join(self.lines)


def pages(root: Path = ROOT) -> list[Path]:
    """The Markdown pages whose blocks are rendered: README.md and every page under docs/."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def _cells(line: str) -> list[str]:
    inner = line.strip()
    inner = inner[1:-1] if inner.endswith("|") and not inner.endswith("\\|") else inner[1:]
    return [cell.strip() for cell in _CELL_SPLIT.split(inner)]


def tables(text: str) -> list[tuple[int, Table]]:
    """Every Markdown table of ``text`` (inside code fences too), with the index of its first line."""
    lines = text.splitlines()
    found, i = [], 0
    while i + 1 < len(lines):
        head, rule = lines[i].strip(), lines[i + 1].strip()
        if head.startswith("|") and _ALIGN.match(rule):
            j = i + 2
            while j < len(lines) and lines[j].strip().startswith("|"):
                j += 1
            raw = [line.rstrip() for line in lines[i:j]]
            found.append((i, Table(raw, _cells(head), _cells(rule), [_cells(line) for line in raw[2:]])))
            i = j
        else:
            i += 1
    return found


def format_table(header: list[str], align: list[str], rows: list[list[str]]) -> str:
    """A Markdown table, one ``| a | b |`` line per row (the alignment row as ``|---|---:|``)."""
    lines = ["|" + "|".join(align) + "|"] + ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(["| " + " | ".join(header) + " |", *lines])


def parse_spec(spec: str, kind: str = "results") -> tuple[str, dict[str, str]]:
    """``PATH key=value ...`` of a marker: the source and its options (raises naming a bad option)."""
    try:
        words = shlex.split(spec)
    except ValueError as err:
        raise RenderError(f"marker {spec!r}: {err}") from err
    if not words:
        raise RenderError(f"<!-- {kind}: --> marker without a file")
    options = {}
    for word in words[1:]:
        key, sep, value = word.partition("=")
        if not sep or key not in _OPTIONS[kind]:
            allowed = ", ".join(f"{k}=" for k in _OPTIONS[kind]) or "none"
            raise RenderError(f"marker {spec!r}: unknown option {word!r}; allowed: {allowed}")
        options[key] = value
    return words[0], options


def _source(root: Path, name: str) -> Path:
    path = (root / name).resolve()
    if not name.startswith("results/") or not path.is_relative_to((root / "results").resolve()):
        raise RenderError(f"{name}: a rendered source must be a file under results/")
    if not path.is_file():
        raise RenderError(f"{name}: no such file")
    return path


def _int_option(options: dict, key: str, default: int, name: str) -> int:
    value = options.get(key, str(default))
    if not value.isdigit() or (key == "table" and int(value) < 1):
        raise RenderError(f"{name}: {key}={value!r} must be a whole number" + (" >= 1" if key == "table" else ""))
    return int(value)


def _pick(header: list[str], wanted: str | None, name: str) -> list[int]:
    if wanted is None:
        return list(range(len(header)))
    names = [c.strip() for c in wanted.split(";") if c.strip()]
    missing = [c for c in names if c not in header]
    if missing or not names:
        raise RenderError(f"{name}: columns {missing or wanted!r} not found; its columns are {header}")
    return [header.index(c) for c in names]


def _round(cell: str, digits: int | None) -> str:
    if digits is None or not re.fullmatch(r"[-+]?\d*\.\d+(?:[eE][-+]?\d+)?|[-+]?\d+[eE][-+]?\d+", cell.strip()):
        return cell
    return f"{float(cell):.{digits}f}"


def _markdown_table(text: str, which: str, name: str) -> Table:
    """Table ``which`` of a Markdown file: ``N``, or ``N,M,...`` for the rows of several tables with one header."""
    found = [table for _, table in tables(text)]
    indices = [_int_option({"table": w.strip()}, "table", 1, name) for w in which.split(",")]
    for index in indices:
        if index > len(found):
            raise RenderError(f"{name}: table={index}, but the file holds {len(found)} table(s)")
    first = found[indices[0] - 1]
    for index in indices[1:]:
        other = found[index - 1]
        if other.header != first.header:
            raise RenderError(f"{name}: tables {indices[0]} and {index} have different headers; they cannot be joined")
        first = Table(first.lines + other.lines[2:], first.header, first.align, first.rows + other.rows)
    return first


def render_source(spec: str, root: Path = ROOT) -> str:
    """The Markdown table a ``<!-- results: ... -->`` marker stands for."""
    name, options = parse_spec(spec)
    path = _source(root, name)
    if path.suffix == ".csv":
        if "table" in options:
            raise RenderError(f"{name}: table= applies to Markdown files; a CSV file is one table")
        digits = _int_option(options, "digits", 0, name) if "digits" in options else None
        with path.open(newline="", encoding="utf-8") as handle:
            header, *rows = list(csv.reader(handle))
        keep = _pick(header, options.get("columns"), name)
        body = [[_round(row[k], digits).replace("|", "\\|") for k in keep] for row in rows]
        return format_table([header[k] for k in keep], ["---"] * len(keep), body)
    if path.suffix != ".md":
        raise RenderError(f"{name}: a rendered source is a .md or .csv file")
    if "digits" in options:
        raise RenderError(f"{name}: digits= applies to CSV files; a Markdown table is rendered as written")
    table = _markdown_table(path.read_text(encoding="utf-8"), options.get("table", "1"), name)
    if "columns" not in options:
        return table.text()
    keep = _pick(table.header, options["columns"], f"{name} table {options.get('table', '1')}")
    width = len(table.header)
    pad = [row + [""] * (width - len(row)) for row in table.rows]
    return format_table(
        [table.header[k] for k in keep], [table.align[k] for k in keep], [[r[k] for k in keep] for r in pad]
    )


def _duration(text: str) -> str:
    parts = [float(p) for p in text.split(":")]
    seconds = round(sum(p * 60**i for i, p in enumerate(reversed(parts))))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    words = [f"{hours} h"] if hours else []
    return " ".join([*words, f"{minutes} min", f"{seconds} s"] if hours or minutes else [f"{seconds} s"])


def render_time(spec: str, root: Path = ROOT) -> str:
    """``M min S s, peak memory X GiB`` of the one ``/usr/bin/time -v`` report in a log."""
    name, _ = parse_spec(spec, "time")
    text = _source(root, name).read_text(encoding="utf-8", errors="replace")
    clocks = re.findall(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
    peaks = re.findall(r"Maximum resident set size \(kbytes\): (\d+)", text)
    if len(clocks) != 1 or len(peaks) != 1:
        raise RenderError(f"{name}: expected one `/usr/bin/time -v` report, found {len(clocks)}")
    return f"{_duration(clocks[0])}, peak memory {int(peaks[0]) * 1024 / 2**30:.2f} GiB"


def _code(text: str) -> list[tuple[int, int]]:
    """The character ranges of ``text`` that are code (fenced blocks, inline spans): markers there are examples."""
    ranges = [m.span() for m in _FENCED.finditer(text)]
    for match in _SPAN.finditer(text):
        if not any(a <= match.start() < b for a, b in ranges):
            ranges.append(match.span())
    return ranges


def _markers(pattern: re.Pattern, text: str) -> list[re.Match]:
    code = _code(text)
    return [m for m in pattern.finditer(text) if not any(a <= m.start() < b for a, b in code)]


def render_text(text: str, root: Path = ROOT) -> str:
    """``text`` with every results block and time marker rewritten from its file (markers in code are left)."""
    for pattern, render, kind in ((_BLOCK, render_source, "results"), (_TIME, render_time, "time")):
        pieces, end = [], 0
        for match in _markers(pattern, text):
            body = render(match["spec"], root)
            body = f"\n{body}\n<!-- /results -->" if kind == "results" else f"{body}<!-- /time -->"
            pieces += [text[end : match.start()], f"<!-- {kind}: {match['spec']} -->{body}"]
            end = match.end()
        text = "".join([*pieces, text[end:]])
    return text


def stale_blocks(text: str, root: Path = ROOT) -> list[str]:
    """The sources of the blocks of ``text`` whose content differs from what their file renders."""
    stale = [m["spec"] for m in _markers(_BLOCK, text) if m["body"].rstrip("\n") != render_source(m["spec"], root)]
    return stale + [m["spec"] for m in _markers(_TIME, text) if m["body"] != render_time(m["spec"], root)]


def unmarked_tables(text: str) -> list[str]:
    """The header lines of the tables of ``text`` that hold decimal numbers outside any results block and
    without a ``not-results`` reason on the line before (tables inside code fences are code, not results)."""
    lines = text.splitlines()
    blocked = set()
    for match in _markers(_BLOCK, text):
        first = text.count("\n", 0, match.start())
        blocked.update(range(first, first + match.group(0).count("\n") + 1))
    fenced, inside = set(), False
    for number, line in enumerate(lines):
        if _FENCE.match(line):
            inside = not inside
        if inside:
            fenced.add(number)
    problems = []
    for start, table in tables(text):
        if start in blocked or start in fenced:
            continue
        if start > 0 and _NOT_RESULTS.match(lines[start - 1].strip()):
            continue
        if _DECIMAL.search(_ARXIV.sub("", table.text())):
            problems.append(table.lines[0])
    return problems


def missing_references(text: str, root: Path = ROOT) -> list[str]:
    """The ``results/...`` paths a page names that do not exist and are not in :data:`EXPECTED`."""
    missing = []
    for name in _RESULTS_PATH.findall(text):
        name = name.rstrip(".")
        if not (root / name).exists() and name not in EXPECTED:
            missing.append(name)
    return missing


def check(root: Path = ROOT) -> list[str]:
    """Every problem of the pages: stale blocks, unmarked tables of numbers, results files that do not exist."""
    problems = []
    for page in pages(root):
        text = page.read_text(encoding="utf-8")
        where = page.relative_to(root).as_posix()
        try:
            problems += [f"{where}: stale block from {spec} (run `make render`)" for spec in stale_blocks(text, root)]
        except RenderError as err:
            problems.append(f"{where}: {err}")
        problems += [f"{where}: table of numbers with no results marker: {head}" for head in unmarked_tables(text)]
        problems += [f"{where}: names {name}, which does not exist" for name in missing_references(text, root)]
    return problems


def render(root: Path = ROOT) -> list[Path]:
    """Rewrite every page's blocks from their files; returns the pages that changed."""
    changed = []
    for page in pages(root):
        text = page.read_text(encoding="utf-8")
        new = render_text(text, root)
        if new != text:
            page.write_text(new, encoding="utf-8")
            changed.append(page)
    return changed


def main(argv: list[str] | None = None, root: Path = ROOT) -> int:
    """``python docs/render_results.py [--check]``: render (or only check) the pages of the repository at ``root``."""
    args = sys.argv[1:] if argv is None else argv
    if args not in ([], ["--check"]):
        print("usage: python docs/render_results.py [--check]", file=sys.stderr)
        return 2
    try:
        if args == ["--check"]:
            problems = check(root)
            print("\n".join(problems) or "every results block matches its file")
            return 1 if problems else 0
        changed = render(root)
    except RenderError as err:
        print(f"render_results: {err}", file=sys.stderr)
        return 1
    print("\n".join(f"rendered {p.relative_to(root)}" for p in changed) or "every results block was current")
    problems = check(root)
    print("\n".join(problems), file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

"""The results tables and quoted times of README.md and docs/ are the ones their files under results/ render
(docs/render_results.py); a page that drifts from its file, or shows a table of numbers with no source, fails."""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("render_results", ROOT / "docs" / "render_results.py")
rr = sys.modules["render_results"] = importlib.util.module_from_spec(_spec)  # registered first: it has a dataclass
_spec.loader.exec_module(rr)

TIME_LOG = """\tCommand being timed: "make demo"
\tUser time (seconds): 700.10
\tElapsed (wall clock) time (h:mm:ss or m:ss): {clock}
\tMaximum resident set size (kbytes): {kbytes}
\tExit status: 0
"""


def _write(root: Path, name: str, text: str) -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def repo(tmp_path) -> Path:
    """A repository in miniature: a results table, a CSV, a time log, and pages that show them."""
    _write(
        tmp_path,
        "results/exp/table.md",
        "Title line\n\n| method | top-1 (%) | mean \\|z\\| | s / run |\n|---|---:|---|---|\n"
        "| SCL | 82.93 | 1 | 66 |\n| H-SCL | 83.78 | 0.999 | 78 |\n\nnotes\n\n"
        "```\n| method | top-1 (%) | mean \\|z\\| | s / run |\n|---|---:|---|---|\n| UCL | 75.91 | 2.89 | 62 |\n```\n",
    )
    _write(tmp_path, "results/exp/table.csv", "key,method,top1\nscl,SCL,82.92999863624573\nucl,UCL|x,75.91\n")
    _write(tmp_path, "results/exp/run.log", "stdout\n" + TIME_LOG.format(clock="16:56.92", kbytes=2769456))
    block = '<!-- results: results/exp/table.md columns="method; top-1 (%)" -->\n<!-- /results -->\n'
    _write(tmp_path, "README.md", f"# x\n\nTook <!-- time: results/exp/run.log --><!-- /time -->.\n\n{block}")
    _write(tmp_path, "docs/page.md", "# page\n\n<!-- results: results/exp/table.csv digits=1 -->\n<!-- /results -->\n")
    rr.render(tmp_path)
    return tmp_path


def test_the_pages_of_this_repository_match_their_files():
    problems = rr.check(ROOT)
    assert problems == [], "\n".join(problems)


def test_the_pages_use_markers():
    """Every results table of the pages is under a marker: at least the README's three and every experiment's."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme.count("<!-- results: results/") >= 3
    assert "<!-- time: results/schane-pretrained/run.log -->" in readme
    for page in sorted((ROOT / "docs" / "experiments").glob("*.md")):
        assert "<!-- results: results/" in page.read_text(encoding="utf-8"), page.name


def test_render_writes_what_the_files_hold(repo):
    readme = (repo / "README.md").read_text()
    # the selected columns of table 1, in the order asked, alignment kept; the fenced table 2 is not used
    expected = "| method | top-1 (%) |\n|---|---:|\n| SCL | 82.93 |\n| H-SCL | 83.78 |"
    assert f'columns="method; top-1 (%)" -->\n{expected}\n<!-- /results -->' in readme
    # 16:56.92 rounds to 1017 s; 2769456 KiB = 2.641 GiB
    assert "<!-- time: results/exp/run.log -->16 min 57 s, peak memory 2.64 GiB<!-- /time -->" in readme
    page = (repo / "docs/page.md").read_text()
    table = "| key | method | top1 |\n|---|---|---|\n| scl | SCL | 82.9 |\n| ucl | UCL\\|x | 75.9 |"
    assert f"digits=1 -->\n{table}\n<!-- /results -->" in page
    assert rr.check(repo) == []
    assert rr.render(repo) == []  # rendering twice changes nothing


def test_a_page_that_drifts_from_its_file_fails_and_render_repairs_it(repo):
    readme = repo / "README.md"
    readme.write_text(readme.read_text().replace("| SCL | 82.93 |", "| SCL | 82.39 |"))
    stale = 'README.md: stale block from results/exp/table.md columns="method; top-1 (%)" (run `make render`)'
    assert rr.check(repo) == [stale]
    rr.render(repo)
    assert "| SCL | 82.93 |" in readme.read_text() and rr.check(repo) == []
    # the file changes (a re-run), the page does not: stale again, in both the table and the time
    _write(repo, "results/exp/run.log", TIME_LOG.format(clock="1:02:03.4", kbytes=1048576))
    _write(repo, "results/exp/table.csv", "key,method,top1\nscl,SCL,80.0\n")
    problems = rr.check(repo)
    assert problems == [
        "README.md: stale block from results/exp/run.log (run `make render`)",
        "docs/page.md: stale block from results/exp/table.csv digits=1 (run `make render`)",
    ]
    rr.render(repo)
    assert "1 h 2 min 3 s, peak memory 1.00 GiB" in readme.read_text()
    assert rr.check(repo) == []


def test_a_drifted_copy_of_this_repository_fails(tmp_path):
    for name in ("README.md", "docs", "results"):
        source = ROOT / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, tmp_path / name)
    assert rr.check(tmp_path) == []
    readme = tmp_path / "README.md"
    text = readme.read_text()
    start = text.index("<!-- results: results/table1-quick/")
    row = text.index("| SCL |", start)
    end = text.index("\n", row)
    readme.write_text(text[:row] + "| SCL | 99.99 | 99.99 | 99.99 |" + text[end:])
    problems = rr.check(tmp_path)
    assert len(problems) == 1 and problems[0].startswith("README.md: stale block from results/table1-quick/")
    rr.render(tmp_path)
    assert readme.read_text() == text


def test_tables_of_numbers_need_a_marker_or_a_reason():
    text = (
        "| a | b |\n|---|---|\n| x | 1.25 |\n\n"  # numbers, no marker: reported
        "<!-- not-results: the paper's published values -->\n| p | q |\n|---|---|\n| y | 87.2 |\n\n"
        "| option | default |\n|---|---|\n| n | 3 |\n\n"  # no decimal number: not a result
        "| method | from |\n|---|---|\n| h-scl | arXiv 2209.00078 |\n\n"  # an arXiv identifier is not a number
        "```\n| c | d |\n|---|---|\n| z | 0.5 |\n```\n"  # code, not a results table
        "<!-- results: results/x.md -->\n| e | f |\n|---|---|\n| w | 2.5 |\n<!-- /results -->\n"
    )
    assert rr.unmarked_tables(text) == ["| a | b |"]


def test_pages_may_name_only_results_files_that_exist_or_are_expected(repo):
    assert "results/timing/make-demo.txt" in rr.EXPECTED
    text = "see `results/exp/table.csv`, [log](../results/exp/run.log), `results/timing/make-demo.txt`."
    assert rr.missing_references(text, repo) == []
    assert rr.missing_references("in `results/exp/gone.csv`.", repo) == ["results/exp/gone.csv"]


def test_joined_tables_and_fenced_tables(repo):
    joined = rr.render_source('results/exp/table.md table=1,2 columns="method; mean \\|z\\|"', repo)
    assert joined == "| method | mean \\|z\\| |\n|---|---|\n| SCL | 1 |\n| H-SCL | 0.999 |\n| UCL | 2.89 |"
    assert rr.render_source("results/exp/table.md table=2", repo) == (
        "| method | top-1 (%) | mean \\|z\\| | s / run |\n|---|---:|---|---|\n| UCL | 75.91 | 2.89 | 62 |"
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("results/exp/nope.md", "results/exp/nope.md: no such file"),
        ("README.md", "README.md: a rendered source must be a file under results/"),
        ("results/../README.md", "a rendered source must be a file under results/"),
        ("results/exp/run.log", "a rendered source is a .md or .csv file"),
        ("results/exp/table.md table=3", "table=3, but the file holds 2 table(s)"),
        ("results/exp/table.md table=0", "table='0' must be a whole number >= 1"),
        ("results/exp/table.md rows=2", "unknown option 'rows=2'; allowed: table=, columns=, digits="),
        ('results/exp/table.md columns="method; top-5 (%)"', "columns ['top-5 (%)'] not found"),
        ("results/exp/table.md digits=2", "digits= applies to CSV files"),
        ("results/exp/table.csv table=1", "table= applies to Markdown files"),
        ("results/exp/table.csv digits=x", "digits='x' must be a whole number"),
        ('results/exp/table.md columns="unclosed', "No closing quotation"),
    ],
)
def test_bad_markers_are_refused_with_a_clear_message(repo, spec, message):
    with pytest.raises(rr.RenderError) as err:
        rr.render_source(spec, repo)
    assert message in str(err.value)


def test_bad_time_logs_are_refused(repo):
    _write(repo, "results/exp/two.log", TIME_LOG.format(clock="1:00.0", kbytes=1) * 2)
    with pytest.raises(rr.RenderError, match="expected one `/usr/bin/time -v` report, found 2"):
        rr.render_time("results/exp/two.log", repo)
    with pytest.raises(rr.RenderError, match="unknown option 'n=1'; allowed: none"):
        rr.render_time("results/exp/run.log n=1", repo)


def test_the_command_line_checks_and_renders(repo, capsys):
    assert rr.main(["--check"], repo) == 0
    readme = repo / "README.md"
    readme.write_text(readme.read_text().replace("83.78", "83.87"))
    assert rr.main(["--check"], repo) == 1
    assert "README.md: stale block" in capsys.readouterr().out
    assert rr.main([], repo) == 0
    assert "rendered README.md" in capsys.readouterr().out
    assert rr.main(["--bad"], repo) == 2


def test_the_docs_build_refuses_a_stale_page(repo):
    """docs/hooks.py runs the same check on every page, so `make docs` fails on a page that drifted."""
    pytest.importorskip("mkdocs", reason="the docs extra is not installed")
    from mkdocs.exceptions import PluginError

    spec = importlib.util.spec_from_file_location("hscl_docs_hooks", ROOT / "docs" / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    page = (repo / "docs/page.md").read_text()
    hooks.check_results_blocks(page, "page.md", repo)  # current: no error
    with pytest.raises(
        PluginError, match=r"page.md: results block\(s\) differ from their files: results/exp/table.csv"
    ):
        hooks.check_results_blocks(page.replace("82.9", "83.0"), "page.md", repo)
    with pytest.raises(PluginError, match=r"page\.md: results/exp/gone\.md: no such file"):
        hooks.check_results_blocks("<!-- results: results/exp/gone.md -->\n<!-- /results -->\n", "page.md", repo)


#: where a machine keeps its scratch and home folders: a path under one of them names one machine's files
MACHINE_PATH = re.compile(r"(?<![\w.~-])/(?:tmp|home|root|work|Users|mnt|scratch)/")


def test_results_files_hold_no_machine_absolute_path():
    found = []
    for path in sorted((ROOT / "results").rglob("*")):
        if path.is_file() and path.suffix not in (".png", ".pt", ".ckpt"):
            for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                if MACHINE_PATH.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:160]}")
    assert found == [], (
        "absolute paths of a machine in results/ (record a preset name or a relative path):\n" + "\n".join(found)
    )
    assert MACHINE_PATH.search('"config": "/tmp/hb/src/hscl/experiments/configs/x.yaml"')
    assert not MACHINE_PATH.search("`/usr/bin/time -v` https://pypi.org/project/x/ runs/tmp/x")


def test_markers_inside_code_are_examples_not_blocks(repo):
    text = (
        "```markdown\n<!-- results: results/exp/table.md -->\n<!-- /results -->\n```\n\n"
        "Inline: `<!-- time: results/exp/run.log --><!-- /time -->` stays.\n"
    )
    assert rr.render_text(text, repo) == text and rr.stale_blocks(text, repo) == []
    live = text + "\n<!-- results: results/exp/table.md table=2 -->\n<!-- /results -->\n"
    rendered = rr.render_text(live, repo)
    assert rendered.startswith(text) and "| UCL | 75.91 | 2.89 | 62 |\n<!-- /results -->" in rendered
    assert rr.stale_blocks(live, repo) == ["results/exp/table.md table=2"]

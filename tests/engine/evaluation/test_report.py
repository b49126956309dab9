"""hscl.engine.evaluation.report: a pipe inside a table cell stays in its cell, in the Markdown and in the HTML
report."""

from __future__ import annotations

import re

from hscl.engine.evaluation.report import _markdown_blocks, markdown_table


def test_a_pipe_in_a_cell_is_escaped_and_the_table_keeps_its_columns():
    table = markdown_table(["method", "mean |z|"], [["SCL", 1], ["a|b", "0.999"]])
    assert table == "| method | mean \\|z\\| |\n|---|---|\n| SCL | 1 |\n| a\\|b | 0.999 |"
    for line in table.splitlines():
        assert len(re.split(r"(?<!\\)\|", line)) - 2 == 2  # two cells on every line


def test_the_html_report_reads_the_escaped_cells_back():
    html = _markdown_blocks("Title\n\n" + markdown_table(["method", "mean |z|"], [["a|b", "0.999"]]))
    assert "<p>Title</p>" in html
    assert re.findall(r"<th>(.*?)</th>", html) == ["method", "mean |z|"]
    assert re.findall(r"<td>(.*?)</td>", html) == ["a|b", "0.999"]

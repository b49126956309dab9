"""``hscl --help`` and every sub-command's help are plain text: no reST markup (double backticks, Sphinx roles)."""

from __future__ import annotations

import argparse
import re

from hscl.cli import build_parser

MARKUP = re.compile(r"``|:(?:func|class|meth|mod|data|attr|obj|exc|ref):`|`[^`\s][^`]*`_")


def _helps() -> dict[str, str]:
    parser = build_parser()
    helps = {"hscl": parser.format_help()}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                helps[f"hscl {name}"] = sub.format_help()
    return helps


def test_help_texts_have_no_markup():
    helps = _helps()
    assert {"hscl train", "hscl reproduce", "hscl finetune", "hscl presets"} <= set(helps)
    dirty = {name: MARKUP.findall(text) for name, text in helps.items() if MARKUP.search(text)}
    assert dirty == {}


def test_the_markup_check_sees_markup():
    assert MARKUP.search("see ``hscl train``") and MARKUP.search("a :func:`main` call")
    assert not MARKUP.search("hscl train --set loss.beta=2 (the 'hscl presets' list)")

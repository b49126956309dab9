"""``hscl presets [NAME]``: list the packaged presets and run configs, or print one."""

from __future__ import annotations

import argparse


def add_presets(sub: argparse._SubParsersAction) -> None:
    """Declare ``hscl presets``."""
    ps = sub.add_parser("presets", help="list the packaged presets and run configs, or print one")
    ps.add_argument("name", nargs="?", help="a run config to print, e.g. table1/quick/h-scl-beta")
    ps.add_argument("--configs", help="also list the presets of this folder")
    ps.set_defaults(func=cmd_presets)


def cmd_presets(args: argparse.Namespace) -> int:
    """``hscl presets``: the packaged presets; ``hscl presets NAME`` prints one config (to copy and edit)."""
    from hscl.experiments.extensions import EXPERIMENTS, list_extension_presets
    from hscl.experiments.presets import SUITES, list_presets, packaged_configs, resolve_config

    if args.name is not None:
        print(resolve_config(args.name).read_text(), end="")
        return 0
    root = packaged_configs()
    print(f"packaged presets (in {root}); run one with 'hscl reproduce EXPERIMENT --preset NAME':")
    for suite in SUITES:
        names = ", ".join(list_presets(suite, args.configs)) or "-"
        if suite == "figures":  # each figure set-up is an experiment of its own, without --preset
            names += " (experiments of their own: 'hscl reproduce collapse', 'hscl reproduce fig4-fig5')"
        print(f"  {suite}: {names}")
    for experiment in EXPERIMENTS:  # the extension experiments: multilabel, small-batch, auto-beta
        print(f"  {experiment}: {', '.join(list_extension_presets(experiment, args.configs)) or '-'}")
    print("run configs for 'hscl train --config NAME' (print one with 'hscl presets NAME'):")
    for path in sorted((root / "table1").rglob("*.yaml")):
        print(f"  {path.relative_to(root).with_suffix('')}")
    return 0

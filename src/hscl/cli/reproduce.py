"""``hscl reproduce EXPERIMENT``: the sub-parser, the command and one function per experiment."""

from __future__ import annotations

import argparse


def _reproduce_table1(args: argparse.Namespace) -> None:
    from hscl.experiments.table1 import reproduce_table1

    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    methods = args.methods.split(",") if args.methods else None
    reproduce_table1(
        args.preset or "quick",
        args.out or f"runs/table1-{args.preset or 'quick'}",
        seeds=seeds,
        overrides=args.set,
        config_dir=args.configs,
        data_dir=args.data_dir,
        methods=methods,
    )


def _reproduce_fig4_fig5(args: argparse.Namespace) -> None:
    from hscl.experiments.figures import reproduce_fig4_fig5

    reproduce_fig4_fig5(
        args.out or "runs/fig4-fig5", overrides=args.set, config_dir=args.configs, data_dir=args.data_dir
    )


def _reproduce_collapse(args: argparse.Namespace) -> None:
    from hscl.experiments.figures import reproduce_collapse

    reproduce_collapse(
        args.out or "runs/collapse",
        overrides=args.set,
        config_dir=args.configs,
        data_dir=args.data_dir,
        methods=args.methods.split(",") if args.methods else None,
        normalizations=args.normalizations.split(",") if args.normalizations else None,
    )


def _reproduce_schane(args: argparse.Namespace) -> None:
    from hscl.experiments.schane import reproduce_schane

    reproduce_schane(
        args.out or f"runs/schane-{args.preset or 'quick'}",
        preset=args.preset or "quick",
        overrides=args.set or [],
        seeds=[int(s) for s in args.seeds.split(",")] if args.seeds else None,
        data_dir=args.data_dir,
        config_dir=args.configs,
        select=args.select,
    )


def _reproduce_table2(args: argparse.Namespace) -> None:
    from hscl.experiments.table2 import find_table2_preset, load_table2_config, reproduce_table2

    if args.seeds:
        raise ValueError("table2 repeats the cross-validation with seeds 0 .. R-1: use --repeats R instead of --seeds")
    preset = args.preset or "quick"
    overrides = list(args.set or [])
    for value, key in (
        (args.dataset, "datasets"),
        (args.methods, "methods"),
        (args.betas, "betas"),
    ):
        if value:
            overrides.append(f"{key}=[{value}]")
    for value, key in ((args.epochs, "train.epochs"), (args.folds, "eval.folds"), (args.repeats, "eval.repeats")):
        if value is not None:
            overrides.append(f"{key}={value}")
    if args.data_dir:
        overrides.append(f"data_dir={args.data_dir}")
    config = load_table2_config(find_table2_preset(preset, args.configs), overrides)
    reproduce_table2(config, args.out or f"runs/table2-{preset}")


def _reproduce_extension(experiment: str):
    """The command of one extension experiment: multilabel, small-batch or auto-beta."""

    def run(args: argparse.Namespace) -> None:
        from hscl.experiments.extensions import reproduce_extension

        preset = args.preset or "quick"
        reproduce_extension(
            experiment,
            preset,
            args.out or f"runs/{experiment}-{preset}",
            seeds=[int(s) for s in args.seeds.split(",")] if args.seeds else None,
            cells=args.methods.split(",") if args.methods else None,
            overrides=args.set,
            config_dir=args.configs,
            data_dir=args.data_dir,
            **({"select": args.select, "workers": args.workers} if experiment == "auto-beta" else {}),
        )

    return run


#: ``hscl reproduce EXPERIMENT``: experiment name -> function of the parsed arguments. Each entry
#: imports its module lazily, so a missing optional dependency only affects its own experiment.
REPRODUCERS: dict = {
    "table1": _reproduce_table1,
    "fig4-fig5": _reproduce_fig4_fig5,
    "collapse": _reproduce_collapse,
    "schane": _reproduce_schane,
    "table2": _reproduce_table2,
    "multilabel": _reproduce_extension("multilabel"),
    "small-batch": _reproduce_extension("small-batch"),
    "auto-beta": _reproduce_extension("auto-beta"),
}


#: the experiments that choose a best point and take ``--select``
SELECTING = ("schane", "auto-beta")


def cmd_reproduce(args: argparse.Namespace) -> int:
    if args.select is not None and args.experiment not in SELECTING:
        raise ValueError(f"--select applies to {', '.join(SELECTING)}; {args.experiment} chooses no best point")
    if args.workers != 1 and args.experiment != "auto-beta":
        raise ValueError(f"--workers applies to auto-beta, not to {args.experiment}")
    REPRODUCERS[args.experiment](args)
    return 0


def add_reproduce(sub: argparse._SubParsersAction) -> None:
    """Declare ``hscl reproduce``."""
    rp = sub.add_parser("reproduce", help="reproduce a table of the paper, or run an extension experiment")
    rp.add_argument("experiment", choices=sorted(REPRODUCERS))
    rp.add_argument(
        "--preset",
        help="a packaged preset (see 'hscl presets'): table1: quick [default], cifar10, cifar100, stl10, "
        "tiny-imagenet; table2: quick [default], paper; schane: quick [default], pretrained, cifar-fs-vit (GPU); "
        "multilabel, small-batch, auto-beta: quick [default]",
    )
    rp.add_argument("--out", help="output directory (default runs/<experiment>[-<preset>])")
    rp.add_argument(
        "--seeds", help="comma-separated seeds (default 0; multilabel, small-batch, auto-beta: the preset's)"
    )
    rp.add_argument(
        "--methods",
        help="comma-separated subset of the preset's methods (table1: its config names, e.g. scl,h-scl-beta; "
        "collapse, table2: method names; table2 also: untrained; multilabel, small-batch, auto-beta: the preset's "
        "cell keys, e.g. auto-beta: beta-1,auto-0.5)",
    )
    rp.add_argument("--normalizations", help="collapse: comma-separated subset of sphere,ball,none")
    rp.add_argument("--dataset", help="table2: comma-separated datasets (molecules, MUTAG, ENZYMES, PTC, IMDB-B, ...)")
    rp.add_argument("--betas", help="table2: comma-separated beta grid of h-ucl / h-scl (default 1,2,10)")
    rp.add_argument("--epochs", type=int, help="table2: pre-training epochs")
    rp.add_argument("--folds", type=int, help="table2: outer cross-validation folds (default 10)")
    rp.add_argument("--repeats", type=int, help="table2: repetitions of the cross-validation")
    rp.add_argument(
        "--select",
        choices=("validation", "test"),
        help="schane: the episodes the ablation's best lam is chosen on: validation (the preset's default; episodes "
        "of the held-out classes' training images) or test (the paper's protocol); auto-beta: the split the grid "
        "point and the default target are chosen on: validation (default; eval.val_fraction) or test",
    )
    rp.add_argument(
        "--workers", type=int, default=1, help="auto-beta: cells trained at once, each in its own process (default 1)"
    )
    rp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override every config")
    rp.add_argument("--data-dir")
    rp.add_argument(
        "--configs",
        help="your own presets folder, looked in before the packaged ones (DIR/table1/<preset>/*.yaml, "
        "DIR/figures/<name>/{base,runs}.yaml, DIR/table2/<preset>.yaml, DIR/schane/<preset>.yaml, "
        "DIR/extensions/<experiment>/<preset>.yaml)",
    )
    rp.set_defaults(func=cmd_reproduce)

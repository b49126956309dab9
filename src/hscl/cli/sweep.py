"""``hscl sweep``: a grid search, one trial per point, in a resumable Optuna study."""

from __future__ import annotations

import argparse


def add_sweep(sub: argparse._SubParsersAction) -> None:
    """Declare ``hscl sweep``."""
    sw = sub.add_parser("sweep", help="grid search, one trial per point, in a resumable Optuna study")
    sw.add_argument("config", help="YAML run config: a file, or a packaged one by name (e.g. table1/quick/h-scl-beta)")
    sw.add_argument(
        "--grid",
        action="append",
        metavar="NAME=V1,V2,...",
        help="values of one parameter (beta, tau, tau_start, tau_end, temperature, lr, batch_size or a dotted "
        "config key); several --grid options form their product",
    )
    sw.add_argument("--set", action="append", metavar="KEY=VALUE", help="override for every point")
    sw.add_argument("--out", help="folder of the trials and results (default runs/sweep-<config name>)")
    sw.add_argument(
        "--storage",
        metavar="URL",
        help="Optuna storage the workers share (default <out>/study.db): a SQLite file or sqlite:///PATH (one "
        "machine); postgresql://USER@HOST/DB, mysql+pymysql://USER@HOST/DB or journal:PATH (several machines)",
    )
    sw.add_argument("--study", default="hscl-sweep", help="study name in the storage (default hscl-sweep)")
    sw.add_argument("--workers", type=int, default=1, help="worker processes sharing the study (default 1)")
    sw.add_argument(
        "--gpus",
        help="comma-separated GPU indices the workers spread over, worker i on the (i mod n)-th (default: every "
        "visible GPU, worker i on GPU i mod n)",
    )
    sw.add_argument("--metric", default="linear_top1", help="maximised: linear_top1 (default), knn_top1, linear_top5")
    sw.add_argument(
        "--select",
        choices=("validation", "test"),
        default="validation",
        help="the split the best point is chosen on: validation (default; the metric on eval.val_fraction of the "
        "training split held out, 0.1 unless set; the chosen point's test metric is reported) or test (the paper's "
        "protocol: best over the grid on the test split)",
    )
    sw.add_argument("--trial", metavar="MODULE:FUNCTION", help="a custom trial fn(config, run_dir) -> {metric: value}")
    sw.add_argument(
        "--stale-after",
        type=float,
        default=300.0,
        help="seconds without heartbeat before a running trial of another machine counts as dead (default 300)",
    )
    sw.add_argument("--data-dir")
    sw.set_defaults(func=cmd_sweep)


def cmd_sweep(args: argparse.Namespace) -> int:
    from hscl.engine.runtime.config import load_config
    from hscl.engine.sweep import Sweep, parse_grid, run_sweep, summary
    from hscl.experiments.presets import resolve_config

    args.config = str(resolve_config(args.config))
    overrides = list(args.set or [])
    if args.data_dir is not None:
        overrides.append(f"data.data_dir={args.data_dir}")
    grid = parse_grid(args.grid or [])
    sweep = Sweep(
        config=args.config,
        grid=grid,
        out=args.out or f"runs/sweep-{load_config(args.config, overrides).name}",
        overrides=overrides,
        storage=args.storage,
        metric=args.metric,
        trial=args.trial,
        stale_after=args.stale_after,
        heartbeat=min(30.0, args.stale_after / 4),
        study_name=args.study,
        select=args.select,
    )
    for note in sweep.notes:
        print(f"hscl sweep: {note}", flush=True)
    gpus = None
    if args.gpus is not None:
        try:
            gpus = [int(v) for v in args.gpus.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"--gpus must be comma-separated GPU indices, e.g. 0,1; got {args.gpus!r}") from None
    print(summary(run_sweep(sweep, workers=args.workers, gpus=gpus)))
    return 0

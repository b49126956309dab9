"""``hscl train``, ``sweep``, ``evaluate``, ``diagnose``, ``report``, ``presets``: a sub-parser and a command each."""

from __future__ import annotations

import argparse


def _overrides(args: argparse.Namespace) -> list[str]:
    out = list(args.set or [])
    for flag, key in (
        ("dataset", "data.dataset"),
        ("data_dir", "data.data_dir"),
        ("method", "loss.method"),
        ("epochs", "train.epochs"),
        ("batch_size", "train.batch_size"),
        ("seed", "train.seed"),
        ("precision", "train.precision"),
        ("accelerator", "train.accelerator"),
        ("devices", "train.devices"),
        ("num_nodes", "train.num_nodes"),
        ("strategy", "train.strategy"),
        ("deterministic", "train.deterministic"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            out.append(f"{key}={str(value).lower() if isinstance(value, bool) else value}")
    return out


def add_train(sub: argparse._SubParsersAction) -> None:
    """Declare ``hscl train``."""
    tr = sub.add_parser("train", help="pre-train one configuration")
    tr.add_argument(
        "--config", help="YAML run config: a file, or a packaged one by name (e.g. table1/quick/h-scl-beta)"
    )
    tr.add_argument("--out", help="run directory (default runs/<name>)")
    tr.add_argument("--resume", action="store_true", help="continue from <out>/checkpoints/last.ckpt")
    tr.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. --set loss.beta=2")
    tr.add_argument("--dataset")
    tr.add_argument("--data-dir")
    tr.add_argument("--method")
    tr.add_argument("--epochs", type=int)
    tr.add_argument("--batch-size", type=int)
    tr.add_argument("--seed", type=int)
    tr.add_argument(
        "--precision",
        choices=["auto", "fastest", "bf16", "16", "32"],
        help="auto (default; CPU: bf16-mixed where it has native bf16, amx_bf16 / avx512_bf16, else 32; CUDA: "
        "bf16-mixed on compute capability >= 8.0, else fp16-mixed), fastest (CPU: timed), bf16, 16 (CUDA), 32",
    )
    tr.add_argument("--accelerator", choices=["cpu", "gpu"], help="cpu (default; DDP over gloo) or gpu (NCCL)")
    tr.add_argument("--devices", type=int, help="processes (CPU) or GPUs per node; the batch is split over them")
    tr.add_argument("--num-nodes", type=int, help="nodes (Lightning's MASTER_ADDR / NODE_RANK variables, or torchrun)")
    tr.add_argument("--strategy", choices=["auto", "ddp", "ddp_spawn", "ddp_fork"], help="Lightning strategy")
    tr.add_argument(
        "--deterministic",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="deterministic kernels (default: on for CPU, bit-exact --resume; off for GPU, faster)",
    )
    tr.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    tr.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from hscl.engine.config import config_to_dict, load_config
    from hscl.engine.distributed import launch_rank
    from hscl.engine.train import run_paths, train
    from hscl.experiments.presets import resolve_config

    config = load_config(resolve_config(args.config), _overrides(args))
    out = args.out or f"runs/{config.name}"
    if args.print_config:
        import yaml

        print(yaml.safe_dump(config_to_dict(config), sort_keys=False))
        return 0
    paths = run_paths(out)
    if args.resume and not (paths.last.exists() or paths.previous.exists()):
        raise FileNotFoundError(
            f"--resume: {out} holds no run to continue (no checkpoints/last.ckpt); leave out --resume to start one"
        )
    final = train(config, out, resume=args.resume)
    if launch_rank(config.train.devices) == 0:  # under DDP every process returns here; one prints
        print(f"final checkpoint: {final}")
    return 0


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
    from hscl.engine.config import load_config
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


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    """Declare ``hscl evaluate``."""
    ev = sub.add_parser("evaluate", help="linear probe + kNN of a checkpoint's frozen encoder")
    ev.add_argument("checkpoint")
    ev.add_argument("--data-dir", help="where the checkpoint's dataset is (if not where it was trained)")
    ev.add_argument("--json", help="also write the result here")
    _add_device(ev)
    ev.set_defaults(func=cmd_evaluate)


def _check_json(path: str | None) -> None:
    """``--json FILE`` names a file in an existing folder: checked before the work starts."""
    from pathlib import Path

    if path is None:
        return
    if Path(path).is_dir():
        raise ValueError(f"--json {path} is a folder; name a file to write to (e.g. {Path(path) / 'result.json'})")
    if not Path(path).parent.is_dir():
        raise FileNotFoundError(f"--json {path}: the folder {Path(path).parent} does not exist")


def _add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", default="auto", help="auto (default: a CUDA GPU when there is one, else the CPU), cpu, cuda, cuda:N"
    )


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from hscl.engine.config import config_to_dict
    from hscl.engine.evaluate import evaluate_task
    from hscl.engine.train import load_data, load_task

    _check_json(args.json)
    task, config = load_task(args.checkpoint, data_dir=args.data_dir, device=args.device)
    result = evaluate_task(task, load_data(config), config)
    result["checkpoint"] = str(args.checkpoint)
    result["config"] = config_to_dict(config)
    if result.get("multilabel"):  # multi-hot labels: mAP and micro-F1 instead of top-k
        print(
            f"{config.loss.method} on {config.data.dataset}: linear mAP {result['linear_mAP']:.2f}%  "
            f"micro-F1 {result['linear_micro_f1']:.2f}%  kNN mAP {result['knn_mAP']:.2f}%"
        )
    else:
        print(
            f"{config.loss.method} on {config.data.dataset}: linear top-1 {result['linear_top1']:.2f}%  "
            f"top-5 {result['linear_top5']:.2f}%  kNN top-1 {result['knn_top1']:.2f}%"
        )
    if "val_size" in result:  # eval.val_fraction > 0: the held-out part of the training split, never trained on
        shown = ("linear_mAP", "knn_mAP") if result.get("multilabel") else ("linear_top1", "knn_top1")
        scores = "  ".join(f"{key} {result['val_' + key]:.2f}%" for key in shown)
        print(f"validation ({result['val_size']} images held out of the training split): {scores}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    return 0


def add_diagnose(sub: argparse._SubParsersAction) -> None:
    """Declare ``hscl diagnose``."""
    dg = sub.add_parser("diagnose", help="geometry diagnostics of a checkpoint (Assumption 1, Lemma 1, collapse)")
    dg.add_argument("checkpoint")
    dg.add_argument("--probe-size", type=int, help="probe samples (default: the run's diagnostics.probe_size)")
    dg.add_argument("--beta", type=float, help="tilt the quartet / Assumption 1 with exp(beta g)")
    dg.add_argument("--tau", type=float, help="... or with the threshold exp(g) >= tau")
    dg.add_argument("--data-dir", help="where the checkpoint's dataset is (if not where it was trained)")
    dg.add_argument("--json", help="also write the measurements here")
    _add_device(dg)
    dg.set_defaults(func=cmd_diagnose)


def cmd_diagnose(args: argparse.Namespace) -> int:
    """Geometry diagnostics of a checkpoint on its run's fixed probe set."""
    import json
    import math

    from hscl.engine.monitor import diagnostics_hardening, measure_geometry, probe_set
    from hscl.engine.train import load_data, load_task
    from hscl.hardening import Exponential, Threshold

    if args.probe_size is not None and args.probe_size < 4:
        raise ValueError(f"--probe-size must be >= 4 (probe samples, two views each), got {args.probe_size}")
    if args.beta is not None and args.tau is not None:
        raise ValueError("give at most one of --beta and --tau")
    if args.beta is not None and not args.beta >= 0:
        raise ValueError(f"--beta must be >= 0, got {args.beta}")
    if args.tau is not None and not args.tau > 0:
        raise ValueError(f"--tau must be > 0, got {args.tau}")
    _check_json(args.json)
    task, config = load_task(args.checkpoint, data_dir=args.data_dir, device=args.device)
    if args.probe_size is not None:
        config.diagnostics.probe_size = args.probe_size
    if args.beta is not None:
        hardening = Exponential(args.beta)
    elif args.tau is not None:
        hardening = Threshold(args.tau)
    else:
        hardening = diagnostics_hardening(config, task.loss_fn)
    data = load_data(config)
    x, labels = probe_set(task, data, config)
    metrics, values = measure_geometry(task, x, labels, hardening)
    print(
        f"hscl diagnose {args.checkpoint}: probe {labels.shape[0]} training images x 2 views, "
        f"{metrics['diag_hardening']}"
    )
    width = max(len(k) for k in metrics)
    for key, value in metrics.items():
        shown = f"{value:.6g}" if isinstance(value, float) and math.isfinite(value) else str(value)
        print(f"  {key:<{width}}  {shown}")
    print(
        f"  {'Cov(z) eigenvalues':<{width}}  "
        + " ".join(f"{float(v):.3g}" for v in values[:12])
        + (" ..." if len(values) > 12 else "")
    )
    if args.json:
        payload = {"checkpoint": str(args.checkpoint), **metrics, "covariance_eigenvalues": [float(v) for v in values]}
        with open(args.json, "w") as handle:
            json.dump(payload, handle, indent=2)
        print(f"written: {args.json}")
    return 0


def add_report(sub: argparse._SubParsersAction) -> None:
    """Declare ``hscl report``."""
    rep = sub.add_parser("report", help="one self-contained HTML page of a run or experiment directory")
    rep.add_argument("run_dir")
    rep.add_argument("--out", help="output file (default <run_dir>/report.html)")
    rep.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hscl.engine.report import html_report

    if Path(args.run_dir).is_file():
        raise ValueError(
            f"{args.run_dir} is a file; hscl report takes the folder of a run or an experiment "
            f"(e.g. {Path(args.run_dir).parent})"
        )
    path = html_report(args.run_dir, args.out)
    print(f"written: {path}")
    return 0


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

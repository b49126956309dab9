"""``hscl diagnose CHECKPOINT``: the geometry diagnostics of a checkpoint (Assumption 1, Lemma 1, collapse)."""

from __future__ import annotations

import argparse

from hscl.cli._common import add_device, check_json


def add_diagnose(sub: argparse._SubParsersAction) -> None:
    """Declare ``hscl diagnose``."""
    dg = sub.add_parser("diagnose", help="geometry diagnostics of a checkpoint (Assumption 1, Lemma 1, collapse)")
    dg.add_argument("checkpoint")
    dg.add_argument("--probe-size", type=int, help="probe samples (default: the run's diagnostics.probe_size)")
    dg.add_argument("--beta", type=float, help="tilt the quartet / Assumption 1 with exp(beta g)")
    dg.add_argument("--tau", type=float, help="... or with the threshold exp(g) >= tau")
    dg.add_argument("--data-dir", help="where the checkpoint's dataset is (if not where it was trained)")
    dg.add_argument("--json", help="also write the measurements here")
    add_device(dg)
    dg.set_defaults(func=cmd_diagnose)


def cmd_diagnose(args: argparse.Namespace) -> int:
    """Geometry diagnostics of a checkpoint on its run's fixed probe set."""
    import json
    import math

    from hscl.engine.pretrain.monitor import diagnostics_hardening, measure_geometry, probe_set
    from hscl.engine.pretrain.run import load_data, load_task
    from hscl.hardening import Exponential, Threshold

    if args.probe_size is not None and args.probe_size < 4:
        raise ValueError(f"--probe-size must be >= 4 (probe samples, two views each), got {args.probe_size}")
    if args.beta is not None and args.tau is not None:
        raise ValueError("give at most one of --beta and --tau")
    if args.beta is not None and not args.beta >= 0:
        raise ValueError(f"--beta must be >= 0, got {args.beta}")
    if args.tau is not None and not args.tau > 0:
        raise ValueError(f"--tau must be > 0, got {args.tau}")
    check_json(args.json)
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

"""The ``hscl`` command line.

* ``hscl train``: pre-train one configuration (YAML and/or flags); ``--resume`` continues it.
* ``hscl evaluate CHECKPOINT``: linear probe + kNN on frozen features of any hscl checkpoint.
* ``hscl reproduce table1 --preset quick``: the paper's Table I and Fig. 1 (``make demo``).
* ``hscl reproduce table2 --dataset molecules``: Table II, graph contrastive learning (GIN) + SVM.
* ``hscl losses``: the six methods' losses on a real batch (scikit-learn digits, two augmented
  views, a fixed random projection to 128-d) next to random embeddings, with their timings.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from hscl import __version__
from hscl.engine.checkpoints import CheckpointError
from hscl.losses import METHODS, Method, get_loss, loss_kwargs

_POSITIVES = {"views": "views", "labels": "same label"}
_NEGATIVES = {"unsupervised": "other samples", "supervised": "other labels", None: "all other rows"}


def _describe(method: Method, loss_fn: torch.nn.Module) -> tuple[str, str, str]:
    """(positives, negatives, hardening) of a registered method, as ``hscl losses`` prints them."""
    hardening = "exp(beta g) or threshold" if method.hardened else "none"
    if getattr(loss_fn, "M", None) == "count":
        hardening = "exp(beta g), M=|N(r)|"
    return _POSITIVES[method.positives], _NEGATIVES[method.negatives], hardening


def _lower_bounds() -> list[tuple[str, str]]:
    """(hardened, plain) pairs of the H-SCL paper's methods with the same positives and negatives."""
    paper = [m for m in METHODS.values() if m.table1]
    return [
        (h.name, p.name)
        for h in paper
        if h.hardened
        for p in paper
        if not p.hardened and (p.positives, p.negatives) == (h.positives, h.negatives)
    ]


def _digits_views(batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two augmented views of ``batch`` digits: 8x8 images, random 1-pixel shift + pixel noise.

    Shape: returns images ``(batch, 2, 64)`` in [0, 1] and labels ``(batch,)``.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    generator = torch.Generator().manual_seed(seed)
    images = torch.tensor(digits.images, dtype=torch.float32) / 16.0  # (1797, 8, 8)
    labels = torch.tensor(digits.target, dtype=torch.long)
    if not 2 <= batch <= len(images):
        raise SystemExit(f"--batch must be in [2, {len(images)}] (the digits set), got {batch}")
    pick = torch.randperm(len(images), generator=generator)[:batch]
    images, labels = images[pick], labels[pick]
    views = []
    for _ in range(2):
        shifts = torch.randint(-1, 2, (batch, 2), generator=generator)
        shifted = torch.stack([torch.roll(img, (int(dy), int(dx)), (0, 1)) for img, (dy, dx) in zip(images, shifts)])
        noisy = (shifted + 0.1 * torch.randn(shifted.shape, generator=generator)).clamp(0, 1)
        views.append(noisy.reshape(batch, 64))
    return torch.stack(views, 1), labels


def cmd_losses(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    x, labels = _digits_views(args.batch, args.seed)
    generator = torch.Generator().manual_seed(args.seed + 1)
    projection = torch.randn(64, args.dim, generator=generator) / 8.0  # fixed random projection
    z_real = (x - x.mean((0, 1), keepdim=True)) @ projection  # (B, 2, dim)
    z_random = torch.randn(z_real.shape, generator=generator)
    print(
        f"hscl {__version__} losses: {args.batch} scikit-learn digits x 2 views (shift + noise) -> fixed random "
        f"projection to {args.dim}-d; beta={args.beta}, temperature={args.temperature}\n"
    )
    header = (
        f"{'method':<8} {'positives':<11} {'negatives':<15} {'hardening':<25} {'loss(digits)':>12} "
        f"{'loss(random)':>12} {'pairs':>7} {'fwd+bwd ms':>10}"
    )
    print(header)
    print("-" * len(header))
    results = {}
    for method, entry in METHODS.items():
        options = {"temperature": args.temperature, "beta": args.beta if entry.hardened else None}
        loss_fn = get_loss(method, **loss_kwargs(method, options))
        z = z_real.clone().requires_grad_(True)
        start = time.perf_counter()
        value = loss_fn(z, labels)
        value.backward()
        value = value.detach()
        elapsed = (time.perf_counter() - start) * 1000
        random_value = float(loss_fn(z_random, labels))
        stats = getattr(loss_fn, "last_stats", None)
        pairs = stats.num_pairs if stats is not None else "-"
        positives, negatives, hardening = _describe(entry, loss_fn)
        results[method] = float(value)
        print(
            f"{method:<8} {positives:<11} {negatives:<15} {hardening:<25} {float(value):>12.4f} "
            f"{random_value:>12.4f} {pairs!s:>7} {elapsed:>10.1f}"
        )
    print()
    checks = [f"{METHODS[h].label} >= {METHODS[p].label}: {results[h] >= results[p]}" for h, p in _lower_bounds()]
    print(f"checks: {' | '.join(checks)} (exponential tilting never lowers the loss)")
    return 0


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
    ):
        value = getattr(args, flag, None)
        if value is not None:
            out.append(f"{key}={value}")
    return out


def cmd_train(args: argparse.Namespace) -> int:
    from hscl.engine.config import config_to_dict, load_config
    from hscl.engine.train import train
    from hscl.experiments.presets import resolve_config

    config = load_config(resolve_config(args.config), _overrides(args))
    out = args.out or f"runs/{config.name}"
    if args.print_config:
        import yaml

        print(yaml.safe_dump(config_to_dict(config), sort_keys=False))
        return 0
    final = train(config, out, resume=args.resume)
    print(f"final checkpoint: {final}")
    return 0


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
    )
    print(summary(run_sweep(sweep, workers=args.workers)))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from hscl.engine.config import config_to_dict
    from hscl.engine.evaluate import evaluate_task
    from hscl.engine.train import load_data, load_task

    task, config = load_task(args.checkpoint, data_dir=args.data_dir)
    result = evaluate_task(task, load_data(config), config)
    result["checkpoint"] = str(args.checkpoint)
    result["config"] = config_to_dict(config)
    print(
        f"{config.loss.method} on {config.data.dataset}: linear top-1 {result['linear_top1']:.2f}%  "
        f"top-5 {result['linear_top5']:.2f}%  kNN top-1 {result['knn_top1']:.2f}%"
    )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    return 0


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


def cmd_diagnose(args: argparse.Namespace) -> int:
    """Geometry diagnostics of a checkpoint on its run's fixed probe set."""
    import json
    import math

    from hscl.engine.monitor import diagnostics_hardening, measure_geometry, probe_set
    from hscl.engine.train import load_data, load_task
    from hscl.hardening import Exponential, Threshold

    task, config = load_task(args.checkpoint, data_dir=args.data_dir)
    if args.probe_size is not None:
        config.diagnostics.probe_size = args.probe_size
    if args.beta is not None and args.tau is not None:
        raise ValueError("give at most one of --beta and --tau")
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
        f"  {'singular values':<{width}}  "
        + " ".join(f"{float(v):.3g}" for v in values[:12])
        + (" ..." if len(values) > 12 else "")
    )
    if args.json:
        payload = {"checkpoint": str(args.checkpoint), **metrics, "singular_values": [float(v) for v in values]}
        with open(args.json, "w") as handle:
            json.dump(payload, handle, indent=2)
        print(f"written: {args.json}")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from hscl.experiments.schane import run_cli

    return run_cli(args)


def _reproduce_schane(args: argparse.Namespace) -> None:
    from hscl.experiments.schane import reproduce_schane

    reproduce_schane(
        args.out or f"runs/schane-{args.preset or 'quick'}",
        preset=args.preset or "quick",
        overrides=args.set or [],
        seeds=[int(s) for s in args.seeds.split(",")] if args.seeds else None,
        data_dir=args.data_dir,
        config_dir=args.configs,
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


def cmd_presets(args: argparse.Namespace) -> int:
    """``hscl presets``: the packaged presets; ``hscl presets NAME`` prints one config (to copy and edit)."""
    from hscl.experiments.presets import SUITES, list_presets, packaged_configs, resolve_config

    if args.name is not None:
        print(resolve_config(args.name).read_text(), end="")
        return 0
    root = packaged_configs()
    print(f"packaged presets (in {root}); run one with `hscl reproduce SUITE --preset NAME`:")
    for suite in SUITES:
        print(f"  {suite}: {', '.join(list_presets(suite, args.configs)) or '-'}")
    print("run configs for `hscl train --config NAME` (print one with `hscl presets NAME`):")
    for path in sorted((root / "table1").rglob("*.yaml")):
        print(f"  {path.relative_to(root).with_suffix('')}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from hscl.engine.report import html_report

    path = html_report(args.run_dir, args.out)
    print(f"written: {path}")
    return 0


#: ``hscl reproduce EXPERIMENT``: experiment name -> function of the parsed arguments. Each entry
#: imports its module lazily, so a missing optional dependency only affects its own experiment.
REPRODUCERS: dict = {
    "table1": _reproduce_table1,
    "fig4-fig5": _reproduce_fig4_fig5,
    "collapse": _reproduce_collapse,
    "schane": _reproduce_schane,
    "table2": _reproduce_table2,
}


def cmd_reproduce(args: argparse.Namespace) -> int:
    REPRODUCERS[args.experiment](args)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hscl", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"hscl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

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
    tr.add_argument("--precision", choices=["auto", "bf16", "32"])
    tr.add_argument("--accelerator", choices=["cpu", "gpu"], help="cpu (default; DDP over gloo) or gpu (NCCL)")
    tr.add_argument("--devices", type=int, help="processes (CPU) or GPUs per node; the batch is split over them")
    tr.add_argument("--num-nodes", type=int, help="nodes (Lightning's MASTER_ADDR / NODE_RANK variables, or torchrun)")
    tr.add_argument("--strategy", choices=["auto", "ddp", "ddp_spawn", "ddp_fork"], help="Lightning strategy")
    tr.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    tr.set_defaults(func=cmd_train)

    sw = sub.add_parser("sweep", help="grid search, one trial per point, in a resumable Optuna study (SQLite)")
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
    sw.add_argument("--storage", help="SQLite file of the study (default <out>/study.db); workers share it")
    sw.add_argument("--workers", type=int, default=1, help="worker processes sharing the study (default 1)")
    sw.add_argument("--metric", default="linear_top1", help="maximised: linear_top1 (default), knn_top1, linear_top5")
    sw.add_argument("--trial", metavar="MODULE:FUNCTION", help="a custom trial fn(config, run_dir) -> {metric: value}")
    sw.add_argument(
        "--stale-after",
        type=float,
        default=300.0,
        help="seconds without heartbeat before a running trial of another machine counts as dead (default 300)",
    )
    sw.add_argument("--data-dir")
    sw.set_defaults(func=cmd_sweep)

    ev = sub.add_parser("evaluate", help="linear probe + kNN of a checkpoint's frozen encoder")
    ev.add_argument("checkpoint")
    ev.add_argument("--data-dir", help="where the checkpoint's dataset is (if not where it was trained)")
    ev.add_argument("--json", help="also write the result here")
    ev.set_defaults(func=cmd_evaluate)

    rp = sub.add_parser("reproduce", help="reproduce a table of the paper")
    rp.add_argument("experiment", choices=sorted(REPRODUCERS))
    rp.add_argument(
        "--preset",
        help="a packaged preset (see `hscl presets`): table1: quick [default], cifar10, cifar100, stl10, "
        "tiny-imagenet; table2: quick [default], paper; schane: quick [default]",
    )
    rp.add_argument("--out", help="output directory (default runs/<experiment>[-<preset>])")
    rp.add_argument("--seeds", help="comma-separated seeds (default 0)")
    rp.add_argument(
        "--methods",
        help="comma-separated subset of the preset's methods (table1: its config names, e.g. scl,h-scl-beta; "
        "collapse, table2: method names; table2 also: untrained)",
    )
    rp.add_argument("--normalizations", help="collapse: comma-separated subset of sphere,ball,none")
    rp.add_argument("--dataset", help="table2: comma-separated datasets (molecules, MUTAG, ENZYMES, PTC, IMDB-B, ...)")
    rp.add_argument("--betas", help="table2: comma-separated beta grid of h-ucl / h-scl (default 1,2,10)")
    rp.add_argument("--epochs", type=int, help="table2: pre-training epochs")
    rp.add_argument("--folds", type=int, help="table2: outer cross-validation folds (default 10)")
    rp.add_argument("--repeats", type=int, help="table2: repetitions of the cross-validation")
    rp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override every config")
    rp.add_argument("--data-dir")
    rp.add_argument(
        "--configs",
        help="your own presets folder, looked in before the packaged ones (DIR/table1/<preset>/*.yaml, "
        "DIR/figures/<name>/{base,runs}.yaml, DIR/table2/<preset>.yaml, DIR/schane/<preset>.yaml)",
    )
    rp.set_defaults(func=cmd_reproduce)

    dg = sub.add_parser("diagnose", help="geometry diagnostics of a checkpoint (Assumption 1, Lemma 1, collapse)")
    dg.add_argument("checkpoint")
    dg.add_argument("--probe-size", type=int, help="probe samples (default: the run's diagnostics.probe_size)")
    dg.add_argument("--beta", type=float, help="tilt the quartet / Assumption 1 with exp(beta g)")
    dg.add_argument("--tau", type=float, help="... or with the threshold exp(g) >= tau")
    dg.add_argument("--data-dir", help="where the checkpoint's dataset is (if not where it was trained)")
    dg.add_argument("--json", help="also write the measurements here")
    dg.set_defaults(func=cmd_diagnose)

    ft = sub.add_parser(
        "finetune",
        help="fine-tune a pre-trained encoder with a linear head: CE, SCHaNe or SupCon+CE (full or few-shot)",
        description="Fine-tune CHECKPOINT (any checkpoint hscl train wrote, or a state_dict file of an hscl model: "
        "the architecture is read off its tensor shapes; --encoder/--in-channels/... override it) with "
        "(1 - lam) CE + lam L on the training split, or on N-way K-shot episodes with --few-shot.",
    )
    ft.add_argument("checkpoint", help="final.ckpt / last.ckpt of hscl train, or a state_dict (.pt) of an hscl model")
    ft.add_argument(
        "--objective",
        default="schane",
        help="ce, schane (default), or <method>+ce for any registered method, e.g. supcon+ce, h-scl+ce",
    )
    ft.add_argument("--lam", type=float, default=0.9, help="weight of the contrastive term (default 0.9)")
    ft.add_argument("--beta", type=float, default=1.0, help="SCHaNe's hardness exp(beta g) (default 1)")
    ft.add_argument("--temperature", type=float, default=0.5, help="gamma of the contrastive term (default 0.5)")
    ft.add_argument(
        "--embedding",
        choices=["projection", "features"],
        default="projection",
        help="contrastive term on the projection z (default) or on the encoder features h",
    )
    ft.add_argument("--epochs", type=int, default=10)
    ft.add_argument("--batch-size", type=int, default=256)
    ft.add_argument("--views", type=int, default=2, help="augmented views per image (default 2)")
    ft.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate of the pre-trained model")
    ft.add_argument("--head-lr", type=float, default=1e-2, help="... of the new linear head (default 1e-2)")
    ft.add_argument("--weight-decay", type=float, default=1e-6)
    ft.add_argument("--bn", choices=["train", "frozen"], help="batch norm: train (default) / frozen (few-shot default)")
    ft.add_argument("--augment", help="augmentation preset (default: the pre-training run's)")
    ft.add_argument("--seed", type=int, default=0)
    ft.add_argument("--dataset", help="default: the checkpoint's (fashion-mnist for a state_dict)")
    ft.add_argument("--data-dir")
    ft.add_argument("--classes", help="comma-separated class ids to fine-tune on / draw episodes from")
    ft.add_argument("--train-subset", type=int, help="stratified subset of the training split")
    ft.add_argument("--test-subset", type=int, help="stratified subset of the test split")
    ft.add_argument("--few-shot", action="store_true", help="N-way K-shot episodes instead of full fine-tuning")
    ft.add_argument("--ways", type=int, default=5)
    ft.add_argument("--shots", default="1,5,10", help="comma-separated K (default 1,5,10)")
    ft.add_argument("--queries", type=int, default=15, help="query images per class (default 15)")
    ft.add_argument("--episodes", type=int, default=100)
    ft.add_argument("--steps", type=int, default=30, help="fine-tuning steps per episode (default 30)")
    ft.add_argument("--encoder", choices=["convnet", "resnet18", "resnet50"], help="state_dict: the encoder")
    ft.add_argument("--in-channels", type=int, help="state_dict: input channels")
    ft.add_argument("--widths", help="state_dict, convnet: comma-separated block widths")
    ft.add_argument("--stem", choices=["cifar", "imagenet"], help="state_dict, resnets: the stem")
    ft.add_argument("--projection-dim", type=int, help="state_dict: projection width")
    ft.add_argument("--hidden-dim", type=int, help="state_dict: projection head hidden width")
    ft.add_argument("--normalization", choices=["sphere", "ball", "none"], help="state_dict: default sphere")
    ft.add_argument("--out", help="output directory (default runs/finetune-<objective>[-fewshot])")
    ft.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    ft.add_argument("--json", help="also write the result here")
    ft.add_argument("--no-progress", action="store_true", help="no progress bars")
    ft.set_defaults(func=cmd_finetune)

    rep = sub.add_parser("report", help="one self-contained HTML page of a run or experiment directory")
    rep.add_argument("run_dir")
    rep.add_argument("--out", help="output file (default <run_dir>/report.html)")
    rep.set_defaults(func=cmd_report)

    ps = sub.add_parser("presets", help="list the packaged presets and run configs, or print one")
    ps.add_argument("name", nargs="?", help="a run config to print, e.g. table1/quick/h-scl-beta")
    ps.add_argument("--configs", help="also list the presets of this folder")
    ps.set_defaults(func=cmd_presets)

    demo = sub.add_parser("losses", help="the six methods' losses on a real batch of digits")
    demo.add_argument("--batch", type=int, default=512, help="samples in the batch (default 512)")
    demo.add_argument("--dim", type=int, default=128, help="embedding dimension (default 128)")
    demo.add_argument("--beta", type=float, default=1.0, help="exponential tilting for h-ucl/h-scl/schane")
    demo.add_argument("--temperature", type=float, default=0.5, help="gamma for the eq. (3) losses")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_losses)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; a bad input (config, argument, checkpoint file) is one line on stderr and exit code 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CheckpointError as err:  # a checkpoint / weights file: one line naming the file and what is wrong
        print(f"hscl: error: {err}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, FileNotFoundError, FileExistsError) as err:
        print(f"hscl: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

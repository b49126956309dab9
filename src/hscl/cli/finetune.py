"""``hscl finetune CHECKPOINT`` / ``hscl finetune --backbone NAME``: fine-tune a pre-trained encoder with a linear
head, fully or ``--few-shot``.

The general fine-tuning command over :mod:`hscl.engine.finetune.loop` (full fine-tuning) and
:mod:`hscl.engine.finetune.fewshot` (N-way K-shot episodes); ``hscl reproduce schane`` is the experiment built
on the same functions. Heavy imports stay inside the functions.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path


def add_finetune(sub: argparse._SubParsersAction) -> None:
    """Declare ``hscl finetune``."""
    ft = sub.add_parser(
        "finetune",
        help="fine-tune a pre-trained encoder with a linear head: CE, SCHaNe or SupCon+CE (full or few-shot)",
        description="Fine-tune CHECKPOINT (any checkpoint hscl train wrote, or a state_dict file of an hscl model: "
        "the architecture is read off its tensor shapes; --encoder/--in-channels/... override it) or a pre-trained "
        "--backbone (efficientnet-lite0, hf:PATH, ...) with (1 - lam) CE + lam L on the training split, or on "
        "N-way K-shot episodes with --few-shot.",
    )
    ft.add_argument(
        "checkpoint", nargs="?", help="final.ckpt / last.ckpt of hscl train, or a state_dict (.pt) of an hscl model"
    )
    ft.add_argument(
        "--backbone",
        help="instead of CHECKPOINT: efficientnet-lite0 (ImageNet weights), hf:PATH (a HuggingFace model folder), "
        "or convnet / resnet18 / resnet50 (with --random-init)",
    )
    ft.add_argument("--input-size", type=int, help="--backbone: resize images to this side (default: its own)")
    ft.add_argument("--random-init", action="store_true", help="--backbone: random initial weights")
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
        help="contrastive term on the projection z (default for CHECKPOINT) or on the encoder features h (default "
        "for --backbone; projection gives it a new head feature_dim -> 512 -> 128)",
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
    ft.add_argument(
        "--device", default="auto", help="auto (default: a CUDA GPU when there is one, else the CPU), cpu, cuda, cuda:N"
    )
    ft.add_argument(
        "--precision",
        choices=["auto", "fastest", "bf16", "16", "32"],
        default="auto",
        help="as train.precision (default auto: CUDA bf16 autocast on compute capability >= 8.0, else fp16 with "
        "gradient scaling, channels-last for convnets, TF32; CPU bf16 where it has native bf16, else float32)",
    )
    ft.set_defaults(func=cmd_finetune)


def _int_list(text: str | None, name: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError as err:
        raise ValueError(f"{name} must be comma-separated integers, got {text!r}") from err


#: the flags that describe a CHECKPOINT's state_dict, and those of a --backbone
_STATE_DICT_FLAGS = ("encoder", "in_channels", "widths", "stem", "projection_dim", "hidden_dim", "normalization")
_BACKBONE_FLAGS = ("input_size", "random_init")


def _load_backbone(args: argparse.Namespace):
    """The pre-trained ``--backbone`` as a :class:`~hscl.engine.finetune.pretrained.Pretrained`
    (``source="backbone"``)."""
    from hscl.engine.finetune.pretrained import Pretrained
    from hscl.models import build_backbone

    given = [f"--{f.replace('_', '-')}" for f in _STATE_DICT_FLAGS if getattr(args, f) is not None]
    if args.checkpoint is not None or given:
        raise ValueError(f"--backbone replaces CHECKPOINT and its flags; got {args.checkpoint or ' '.join(given)}")
    try:
        backbone = build_backbone(args.backbone, pretrained=not args.random_init, input_size=args.input_size)
    except ModuleNotFoundError as err:  # the weights' or the model's package: one line with the pip command
        raise ValueError(str(err)) from None
    architecture = {
        "backbone": args.backbone,
        "pretrained": not args.random_init,
        "feature_dim": backbone.feature_dim,
        "input_size": backbone.input_size,
        "mean": backbone.mean,
        "std": backbone.std,
        "in_channels": backbone.in_channels,
    }
    return Pretrained(backbone, "backbone", None, architecture, head_loaded=False)


def _load_model(args: argparse.Namespace):
    """The pre-trained model of ``CHECKPOINT`` or ``--backbone`` (a
    :class:`~hscl.engine.finetune.pretrained.Pretrained`)."""
    from hscl.engine.finetune.pretrained import load_pretrained

    if args.backbone is not None:
        return _load_backbone(args)
    if args.checkpoint is None:
        raise ValueError("pass CHECKPOINT (a checkpoint or state_dict file) or --backbone NAME")
    given = [f"--{f.replace('_', '-')}" for f in _BACKBONE_FLAGS if getattr(args, f) not in (None, False)]
    if given:
        raise ValueError(f"{' '.join(given)} applies to --backbone, not to CHECKPOINT")
    return load_pretrained(
        args.checkpoint,
        encoder=args.encoder,
        in_channels=args.in_channels,
        widths=_int_list(args.widths, "--widths"),
        stem=args.stem,
        projection_dim=args.projection_dim,
        hidden_dim=args.hidden_dim,
        normalization=args.normalization,
        data_dir=args.data_dir,
    )


def _load_data(args: argparse.Namespace, pretrained):
    """``--dataset`` (default: the checkpoint's run's, else fashion-mnist), checked against the model's input."""
    from hscl.data.images import load_dataset

    run = pretrained.config
    dataset = args.dataset or (run.data.dataset if run is not None else "fashion-mnist")
    data_dir = args.data_dir or (run.data.data_dir if run is not None and dataset == run.data.dataset else None)
    data = load_dataset(dataset, data_dir=data_dir)
    if pretrained.source == "backbone":  # grey images are repeated to the backbone's channels
        return data
    if data.channels != pretrained.architecture["in_channels"]:
        raise ValueError(
            f"{dataset} has {data.channels}-channel images but the model takes {pretrained.architecture['in_channels']}"
            "; pass --dataset or --in-channels"
        )
    return data


def _finetune_config(args: argparse.Namespace):
    """The :class:`~hscl.engine.finetune.loop.FinetuneConfig` of the flags."""
    from hscl.engine.finetune.config import FinetuneConfig

    return FinetuneConfig(
        objective=args.objective,
        lam=args.lam,
        beta=args.beta,
        temperature=args.temperature,
        embedding=args.embedding,
        epochs=args.epochs,
        batch_size=args.batch_size,
        views=args.views,
        lr=args.lr,
        head_lr=args.head_lr,
        weight_decay=args.weight_decay,
        bn=args.bn or ("frozen" if args.few_shot else "train"),
        seed=args.seed,
    )


def _run_few_shot(args, pretrained, data, classes, config, augment, out: Path, record: dict) -> None:
    """N-way K-shot episodes on ``classes`` (default: every class); adds ``fewshot``, ``results`` and ``numerics``
    to ``record``."""
    from hscl.engine.finetune.config import OBJECTIVE_LABELS
    from hscl.engine.finetune.fewshot import FewShotConfig, few_shot, mean_ci95
    from hscl.engine.runtime.distributed import resolve_device
    from hscl.engine.runtime.precision import LoopPrecision
    from hscl.experiments.schane import fmt_ci

    pool = classes if classes is not None else list(range(data.num_classes))
    fewshot = FewShotConfig(
        ways=args.ways,
        shots=_int_list(args.shots, "--shots"),
        queries=args.queries,
        episodes=args.episodes,
        steps=args.steps,
        lr=config.lr,
        bn=config.bn,
        seed=args.seed,
    )
    print(f"{fewshot.ways}-way K-shot episodes on {[data.classes[c] for c in pool]} of {data.name} -> {out}")
    episodes = few_shot(
        pretrained.model,
        data,
        pool,
        {config.objective: config},
        fewshot,
        augment=augment,
        out_dir=out,
        resume=args.resume,
        progress=not args.no_progress,
        device=args.device,
        precision=args.precision,
    )
    stored = json.loads((out / "setting.json").read_text())["numerics"]  # the episodes' numerics
    record["numerics"] = LoopPrecision(**stored, setting=args.precision).record(resolve_device(args.device))
    record["fewshot"] = dataclasses.asdict(fewshot)
    record["results"] = {}
    for shots, rows in episodes.items():
        mean, half = mean_ci95([r["accuracy"][config.objective] for r in rows])
        record["results"][str(shots)] = {"top1_mean": mean, "ci95": half, "episodes": len(rows)}
        print(
            f"{fewshot.ways}-way {shots}-shot {OBJECTIVE_LABELS[config.objective]}: {fmt_ci(mean, half)} % "
            f"(mean, 95% CI over {len(rows)} episodes)"
        )


def _run_full(args, pretrained, data, classes, config, augment, out: Path, record: dict) -> None:
    """Full fine-tuning on ``classes`` (default: every class); writes ``<out>/model.pt``, fills ``record``."""
    import torch

    from hscl.engine.finetune.config import OBJECTIVE_LABELS
    from hscl.engine.finetune.loop import finetune, select_classes
    from hscl.experiments.schane import binomial_ci, fmt_ci

    if classes is not None:
        data = select_classes(data, classes)
    if args.train_subset is not None or args.test_subset is not None:
        data = data.subset(args.train_subset, args.test_subset, seed=args.seed)
    print(f"fine-tuning {OBJECTIVE_LABELS[config.objective]} on {data} -> {out}")
    result = finetune(
        pretrained.model,
        data,
        config,
        augment=augment,
        out_dir=out,
        resume=args.resume,
        progress=not args.no_progress,
        device=args.device,
        precision=args.precision,
    )
    torch.save(result.model.state_dict(), out / "model.pt")
    record["numerics"] = result.numerics
    top1, half = binomial_ci(result.test_correct)
    record.update(result.as_dict())
    record["test_top1_ci95"] = half
    record["data"] = repr(data)
    print(
        f"{OBJECTIVE_LABELS[config.objective]}: test top-1 {fmt_ci(top1, half)} % (95% CI over "
        f"{result.test_correct.numel()} test images); weights: {out / 'model.pt'}"
    )


def cmd_finetune(args: argparse.Namespace) -> int:
    """``hscl finetune CHECKPOINT ...`` or ``hscl finetune --backbone NAME ...`` (see ``hscl finetune --help``): full
    fine-tuning, or ``--few-shot``."""
    pretrained = _load_model(args)
    data = _load_data(args, pretrained)
    classes = _int_list(args.classes, "--classes")
    augment = pretrained.augment_config(data.channels, data.size, args.augment)
    config = _finetune_config(args)
    config = config.resolved(pretrained.model)
    out = Path(args.out or f"runs/finetune-{args.objective}{'-fewshot' if args.few_shot else ''}")
    head = "" if pretrained.head_loaded else " (encoder weights only: new projection head)"
    if pretrained.source == "backbone":
        head = f" (contrastive term on the {config.embedding})"
    print(f"hscl finetune: {pretrained.source} {args.backbone or args.checkpoint}{head}: {pretrained.architecture}")
    record: dict = {
        "checkpoint": None if args.checkpoint is None else str(args.checkpoint),
        "backbone": args.backbone,
        "source": pretrained.source,
        "architecture": pretrained.architecture,
        "config": dataclasses.asdict(config),
    }
    run = _run_few_shot if args.few_shot else _run_full
    run(args, pretrained, data, classes, config, augment, out, record)  # records the numerics used
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(record, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2))
    print(f"written: {out / 'result.json'}")
    return 0

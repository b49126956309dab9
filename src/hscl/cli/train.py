"""``hscl train``: pre-train one configuration (YAML and/or flags); ``--resume`` continues it."""

from __future__ import annotations

import argparse


def overrides(args: argparse.Namespace) -> list[str]:
    """The ``--set`` overrides, then one per flag given (``--epochs 3`` -> ``train.epochs=3``)."""
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
    from hscl.engine.pretrain.run import run_paths, train
    from hscl.engine.runtime.config import config_to_dict, load_config
    from hscl.engine.runtime.distributed import launch_rank
    from hscl.experiments.presets import resolve_config

    config = load_config(resolve_config(args.config), overrides(args))
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

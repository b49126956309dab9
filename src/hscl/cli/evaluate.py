"""``hscl evaluate CHECKPOINT``: linear probe + kNN of a checkpoint's frozen encoder."""

from __future__ import annotations

import argparse

from hscl.cli._common import add_device, check_json


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    """Declare ``hscl evaluate``."""
    ev = sub.add_parser("evaluate", help="linear probe + kNN of a checkpoint's frozen encoder")
    ev.add_argument("checkpoint")
    ev.add_argument("--data-dir", help="where the checkpoint's dataset is (if not where it was trained)")
    ev.add_argument("--json", help="also write the result here")
    add_device(ev)
    ev.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from hscl.engine.evaluation.probes import evaluate_task
    from hscl.engine.pretrain.run import load_data, load_task
    from hscl.engine.runtime.config import config_to_dict

    check_json(args.json)
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

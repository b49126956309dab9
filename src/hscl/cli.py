"""The ``hscl`` command line.

``hscl demo``: the six methods' losses on a real batch (scikit-learn digits, two augmented views,
a fixed random projection to 128-d), fed both the real embeddings and random ones of the same
shape, with the forward+backward time of each.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from hscl import __version__
from hscl.losses import LOSSES, get_loss

#: how each registered method chooses positives, negatives and hardening, and where it comes from
METHOD_INFO: dict[str, tuple[str, str, str, str]] = {
    "ucl": ("views", "other samples", "none", "SimCLR (Chen et al. 2020), eq. (3) of H-SCL"),
    "h-ucl": ("views", "other samples", "exp(beta g) or threshold", "Robinson et al., ICLR 2021"),
    "scl": ("same label", "other labels", "none", "H-SCL paper's SCL baseline"),
    "h-scl": ("same label", "other labels", "exp(beta g) or threshold", "Jiang et al., arXiv 2209.00078"),
    "supcon": ("same label", "all other rows", "none", "Khosla et al., NeurIPS 2020"),
    "schane": ("same label", "other labels", "exp(beta g), M=|N(r)|", "Long et al., arXiv 2308.14893"),
}


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


def cmd_demo(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    x, labels = _digits_views(args.batch, args.seed)
    generator = torch.Generator().manual_seed(args.seed + 1)
    projection = torch.randn(64, args.dim, generator=generator) / 8.0  # fixed random projection
    z_real = (x - x.mean((0, 1), keepdim=True)) @ projection  # (B, 2, dim)
    z_random = torch.randn(z_real.shape, generator=generator)
    kwargs = {
        "ucl": {"temperature": args.temperature},
        "h-ucl": {"beta": args.beta, "temperature": args.temperature},
        "scl": {"temperature": args.temperature},
        "h-scl": {"beta": args.beta, "temperature": args.temperature},
        "supcon": {},
        "schane": {"beta": args.beta, "temperature": args.temperature},
    }
    print(
        f"hscl {__version__} demo: {args.batch} scikit-learn digits x 2 views (shift + noise) -> fixed random "
        f"projection to {args.dim}-d; beta={args.beta}, temperature={args.temperature} (supcon: 0.1 / 0.07)\n"
    )
    header = (
        f"{'method':<8} {'positives':<11} {'negatives':<15} {'hardening':<25} {'loss(digits)':>12} "
        f"{'loss(random)':>12} {'pairs':>7} {'fwd+bwd ms':>10}"
    )
    print(header)
    print("-" * len(header))
    results = {}
    for method in LOSSES:
        loss_fn = get_loss(method, **kwargs[method])
        z = z_real.clone().requires_grad_(True)
        start = time.perf_counter()
        value = loss_fn(z, labels)
        value.backward()
        value = value.detach()
        elapsed = (time.perf_counter() - start) * 1000
        random_value = float(loss_fn(z_random, labels))
        stats = getattr(loss_fn, "last_stats", None)
        pairs = stats.num_pairs if stats is not None else "-"
        positives, negatives, hardening, _ = METHOD_INFO[method]
        results[method] = float(value)
        print(
            f"{method:<8} {positives:<11} {negatives:<15} {hardening:<25} {float(value):>12.4f} "
            f"{random_value:>12.4f} {pairs!s:>7} {elapsed:>10.1f}"
        )
    print()
    print(
        f"checks: H-SCL >= SCL: {results['h-scl'] >= results['scl']} | "
        f"H-UCL >= UCL: {results['h-ucl'] >= results['ucl']} (exponential tilting never lowers the loss)"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hscl", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"hscl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="the six methods' losses on a real batch of digits")
    demo.add_argument("--batch", type=int, default=512, help="samples in the batch (default 512)")
    demo.add_argument("--dim", type=int, default=128, help="embedding dimension (default 128)")
    demo.add_argument("--beta", type=float, default=1.0, help="exponential tilting for h-ucl/h-scl/schane")
    demo.add_argument("--temperature", type=float, default=0.5, help="gamma for the eq. (3) losses")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError) as err:
        print(f"hscl: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

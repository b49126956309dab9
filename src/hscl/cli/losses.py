"""``hscl losses``: the six methods' losses on a real batch of digits next to random embeddings, with timings."""

from __future__ import annotations

import argparse
import time

import torch

from hscl import __version__
from hscl.geometry import QUARTET
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
    paper = [METHODS[name] for name in QUARTET]
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


def add_losses(sub: argparse._SubParsersAction) -> None:
    """Declare ``hscl losses``."""
    demo = sub.add_parser("losses", help="the six methods' losses on a real batch of digits")
    demo.add_argument("--batch", type=int, default=512, help="samples in the batch (default 512)")
    demo.add_argument("--dim", type=int, default=128, help="embedding dimension (default 128)")
    demo.add_argument("--beta", type=float, default=1.0, help="exponential tilting for h-ucl/h-scl/schane")
    demo.add_argument("--temperature", type=float, default=0.5, help="gamma for the eq. (3) losses")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_losses)

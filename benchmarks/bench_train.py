"""Pre-training throughput of hscl's pipeline against a reference-style SimCLR / H-SCL loop, on CPU.

What it measures
----------------
Images per second (both views counted: ``steps * B * 2 / seconds``) of complete training steps (data,
augmentation, forward, H-SCL loss, backward, Adam step) for two workloads, each run by two loops in the same
process on the same data with the same model architecture and initial weights, the same batch size and the
same loss definition (H-SCL(beta=1), temperature 0.5, positives = every other row of the same label,
negatives = every row of another label, ``M = 2B - 2``, mean over (anchor, positive) pairs):

* ``fashion``: Fashion-MNIST 28x28 grey (``load_dataset("fashion-mnist")``), ``build_model("convnet", 1,
  widths=(16, 32, 64, 128))``, augmentation preset ``grey28``.
* ``colour``: 50000 synthetic 32x32 RGB uint8 images built from Fashion-MNIST (padded to 32x32, a random
  foreground and background colour per image plus pixel noise; CIFAR is not available offline), labels of the
  Fashion-MNIST originals, ``build_model("resnet18", 3)``, augmentation preset ``colour32``.

hscl side (what ``hscl train`` does per step): ``ViewSampler(pair_mode="instance").batches(epoch)`` indices
into the uint8 image tensor, ``Augment(augment_preset(name))`` on the flattened ``(B*2, C, H, W)`` batch
(batched kornia), the model in ``channels_last`` float32, ``get_loss("h-scl", beta=1.0, temperature=0.5)``
on ``z.view(B, 2, -1)``, ``torch.optim.Adam(lr=1e-3, weight_decay=1e-6)``. An extra column times the same
loop under bf16 autocast (fewer steps, one repeat; this CPU emulates bf16, so it is expected to be slower).

Reference side, written the way public SimCLR / HCL / H-SCL research code is: a ``Dataset`` whose
``__getitem__`` turns one HWC uint8 image into a PIL image and augments it twice in Python (random resized
crop by PIL crop + bilinear resize, horizontal flip, colour jitter with brightness / contrast / saturation via
``PIL.ImageEnhance`` and hue via an HSV round trip in random order, random grayscale, to tensor, Gaussian
noise for ``grey28`` as that preset has it, normalisation), with the augmentation parameters of the same
preset; a ``DataLoader(num_workers=2, batch_size=B, shuffle=True, drop_last=True, persistent_workers=True)``;
the model in the default memory format, float32, called once per view (``net(pos_1)``, ``net(pos_2)``) as
those codes do; and the loss written naively: ``exp`` of the similarity matrix, instance and label masks
built with Python loops over the batch, and eq. (3) of Jiang et al. (arXiv 2209.00078) in exp-then-divide
form, ``-log(pos / (pos + M * E(r)))`` with ``E(r) = sum(imp * neg) / sum(imp)`` over the negatives. At the
start the script checks, in float64 on a small batch, that this loss and its gradient equal hscl's.

Note: this machine's cores are shared. The reference side's two DataLoader worker processes run on the same
cores as the training process (each worker uses one torch thread, the trainer uses torch's default thread
count), exactly as in a plain single-machine run of such code; the hscl side runs everything in one process.

Protocol: for every repeat (``--repeats``, default 3; the order of the two sides alternates between repeats)
each side builds its loop afresh (the reference a new DataLoader, whose workers are shut down after its
measurement so they cannot steal CPU from the other side), runs ``--warmup`` steps (default 3, untimed),
then ``--steps`` timed steps (default 20). The medians over repeats are reported, as this VM has CPU steal.
Each timed window also records the CPU taken by other processes and the hypervisor steal (from ``/proc/stat``
and ``psutil``) so that a disturbed measurement shows as such; run it on an otherwise idle machine.
A breakdown per side comes from separate micro-timings (median of a few calls each): data / augmentation
per batch, model forward + backward (with a fixed random output gradient), loss forward + backward, Adam
step. For the reference, "data" is the single-process cost of one batch (``B`` calls of ``__getitem__`` +
collation); in the real loop two workers share it, and the time the trainer waits on the loader is shown
as well.

Run from the repository root::

    .venv/bin/python benchmarks/bench_train.py                     # full run (tens of minutes on 2 cores)
    .venv/bin/python benchmarks/bench_train.py --quick             # smoke test: tiny batch, few steps
    .venv/bin/python benchmarks/bench_train.py --workloads fashion --steps 10 --json /tmp/bench_train.json

Output: Markdown tables (throughput, per-repeat values, breakdown) and one PASS/FAIL line per workload for the
target "hscl >= 3x reference".
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import math
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import psutil
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance
from torch import Tensor, nn

from hscl.data import load_dataset
from hscl.data.augment import Augment, AugmentConfig, augment_preset
from hscl.data.views import ViewSampler
from hscl.losses import get_loss
from hscl.models import build_model

BETA = 1.0
TEMPERATURE = 0.5
LR = 1e-3
WEIGHT_DECAY = 1e-6
VIEWS = 2
TARGET = 3.0


# --------------------------------------------------------------------------------------------------------------
# workloads


@dataclass
class Workload:
    name: str
    description: str
    images: Tensor  # (N, C, H, W) uint8
    labels: Tensor  # (N,) int64
    preset: str
    encoder: str
    encoder_kw: dict


def colour_from_grey(grey: Tensor, n: int, seed: int = 0, chunk: int = 10000) -> Tensor:
    """``n`` synthetic 32x32 RGB uint8 images from ``(N, 1, 28, 28)`` grey ones: padded by 2 pixels, the grey
    level blends a random foreground colour (per image) with a random background colour plus pixel noise."""
    generator = torch.Generator().manual_seed(seed)
    out = torch.empty(n, 3, 32, 32, dtype=torch.uint8)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        alpha = F.pad(grey[start:stop].float() / 255.0, (2, 2, 2, 2))  # (c, 1, 32, 32)
        fg = 0.3 + 0.7 * torch.rand(stop - start, 3, 1, 1, generator=generator)
        bg = 0.6 * torch.rand(stop - start, 3, 1, 1, generator=generator)
        noise = 0.15 * torch.rand(stop - start, 3, 32, 32, generator=generator)
        x = alpha * fg + (1.0 - alpha) * (bg + noise)
        out[start:stop] = (x.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    return out


def build_workloads(names: list[str]) -> list[Workload]:
    data = load_dataset("fashion-mnist")
    images, labels = data.train_images.contiguous(), data.train_labels.long()
    out = []
    for name in names:
        if name == "fashion":
            out.append(
                Workload(
                    "fashion",
                    f"Fashion-MNIST {tuple(images.shape[1:])} grey, convnet(16,32,64,128), grey28",
                    images,
                    labels,
                    "grey28",
                    "convnet",
                    {"widths": (16, 32, 64, 128)},
                )
            )
        elif name == "colour":
            n = min(50000, images.shape[0])
            colour = colour_from_grey(images, n)
            out.append(
                Workload(
                    "colour",
                    f"synthetic {n} x (3, 32, 32) colour (from Fashion-MNIST), resnet18, colour32",
                    colour,
                    labels[:n].clone(),
                    "colour32",
                    "resnet18",
                    {},
                )
            )
        else:
            raise ValueError(f"unknown workload {name!r}; valid: fashion, colour")
    return out


def make_model(workload: Workload, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(workload.encoder, workload.images.shape[1], **workload.encoder_kw)


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)


# --------------------------------------------------------------------------------------------------------------
# reference side: per-image PIL augmentation, DataLoader workers, naive loss


class PILAugment:
    """One view of one PIL image, per image in Python/PIL/numpy, with the parameters of an ``AugmentConfig``:
    random resized crop (PIL crop + bilinear resize), horizontal flip, colour jitter (applied with probability
    ``jitter_p``, its enabled operations in random order), random grayscale, to tensor, Gaussian noise
    (``noise_std > 0``), normalisation. Returns a float32 ``(C, size, size)`` tensor."""

    def __init__(self, config: AugmentConfig) -> None:
        if config.blur_p > 0:
            raise ValueError("the reference augmentation does not implement Gaussian blur")
        self.config = config
        self.mean = torch.tensor(config.mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(config.std, dtype=torch.float32).view(-1, 1, 1)
        brightness, contrast, saturation, hue = config.jitter
        if config.channels == 1:
            saturation = hue = 0.0
        self.jitter_ops: list[tuple[Callable, float, float]] = []
        if brightness > 0:
            self.jitter_ops.append((self._brightness, max(0.0, 1 - brightness), 1 + brightness))
        if contrast > 0:
            self.jitter_ops.append((self._contrast, max(0.0, 1 - contrast), 1 + contrast))
        if saturation > 0:
            self.jitter_ops.append((self._saturation, max(0.0, 1 - saturation), 1 + saturation))
        if hue > 0:
            self.jitter_ops.append((self._hue, -hue, hue))

    @staticmethod
    def _brightness(img: Image.Image, factor: float) -> Image.Image:
        return ImageEnhance.Brightness(img).enhance(factor)

    @staticmethod
    def _contrast(img: Image.Image, factor: float) -> Image.Image:
        return ImageEnhance.Contrast(img).enhance(factor)

    @staticmethod
    def _saturation(img: Image.Image, factor: float) -> Image.Image:
        return ImageEnhance.Color(img).enhance(factor)

    @staticmethod
    def _hue(img: Image.Image, shift: float) -> Image.Image:
        h, s, v = img.convert("HSV").split()
        hue = np.asarray(h, dtype=np.uint8).astype(np.int16)
        hue = ((hue + round(shift * 255)) % 256).astype(np.uint8)
        return Image.merge("HSV", (Image.fromarray(hue, "L"), s, v)).convert("RGB")

    def _crop_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        area = width * height
        scale, ratio = self.config.crop_scale, self.config.crop_ratio
        log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
        for _ in range(10):
            target = area * random.uniform(scale[0], scale[1])
            aspect = math.exp(random.uniform(*log_ratio))
            w = round(math.sqrt(target * aspect))
            h = round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                left = random.randint(0, width - w)
                top = random.randint(0, height - h)
                return left, top, left + w, top + h
        # fallback: the centred crop of the whole image clipped to the ratio range
        aspect = width / height
        if aspect < ratio[0]:
            w, h = width, round(width / ratio[0])
        elif aspect > ratio[1]:
            w, h = round(height * ratio[1]), height
        else:
            w, h = width, height
        left, top = (width - w) // 2, (height - h) // 2
        return left, top, left + w, top + h

    def __call__(self, img: Image.Image) -> Tensor:
        cfg = self.config
        img = img.crop(self._crop_box(*img.size)).resize((cfg.size, cfg.size), Image.BILINEAR)
        if random.random() < cfg.flip_p:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        if self.jitter_ops and random.random() < cfg.jitter_p:
            for k in torch.randperm(len(self.jitter_ops)).tolist():
                op, low, high = self.jitter_ops[k]
                img = op(img, random.uniform(low, high))
        if cfg.channels == 3 and random.random() < cfg.grayscale_p:
            img = img.convert("L").convert("RGB")
        array = np.asarray(img, dtype=np.float32) / 255.0
        x = torch.from_numpy(array[None] if array.ndim == 2 else array.transpose(2, 0, 1).copy())
        if cfg.noise_std > 0:
            x = (x + cfg.noise_std * torch.randn_like(x)).clamp_(0.0, 1.0)
        return (x - self.mean) / self.std


class PairDataset(torch.utils.data.Dataset):
    """``(view_1, view_2, target)`` of one image, as in SimCLR-style research code (``CIFAR10Pair``)."""

    def __init__(self, data: np.ndarray, targets: list[int], transform: PILAugment) -> None:
        self.data = data  # (N, H, W) grey or (N, H, W, 3) RGB, uint8
        self.targets = targets
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        img, target = self.data[index], self.targets[index]
        img = Image.fromarray(img)
        return self.transform(img), self.transform(img), target


def reference_dataset(workload: Workload) -> PairDataset:
    images = workload.images
    array = images[:, 0].numpy() if images.shape[1] == 1 else images.permute(0, 2, 3, 1).contiguous().numpy()
    return PairDataset(array, workload.labels.tolist(), PILAugment(augment_preset(workload.preset)))


def reference_loader(dataset: PairDataset, batch: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch, shuffle=True, num_workers=2, drop_last=True, persistent_workers=True
    )


def reference_hscl_loss(
    out_1: Tensor, out_2: Tensor, target: Tensor, beta: float = BETA, temperature: float = TEMPERATURE
):
    """H-SCL (eq. (3) of arXiv 2209.00078) the way research code writes it: exp of the similarity matrix,
    masks from Python loops, tilted mean over the negatives by exp-then-divide.

    out_1, out_2: ``(B, d)`` L2-normalised embeddings of the two views; target: ``(B,)`` labels.
    Positives of an anchor: every other row with its label; negatives: every row with another label;
    ``M = 2B - 2``; the loss is the mean over (anchor, positive) pairs.
    """
    batch_size = out_1.shape[0]
    out = torch.cat([out_1, out_2], dim=0)  # (2B, d)
    all_target = torch.cat([target, target], dim=0)
    sim = torch.mm(out, out.t().contiguous())
    exp_sim = torch.exp(sim / temperature)

    # instance mask: everything but the row itself and the other view of its sample
    instance_mask = torch.ones((batch_size, 2 * batch_size), dtype=torch.bool, device=out.device)
    for i in range(batch_size):
        instance_mask[i, i] = 0
        instance_mask[i, i + batch_size] = 0
    instance_mask = torch.cat((instance_mask, instance_mask), 0)

    # label mask: the rows sharing each anchor's label
    label_mask = torch.zeros((2 * batch_size, 2 * batch_size), dtype=torch.bool, device=out.device)
    for r in range(2 * batch_size):
        label_mask[r] = all_target == all_target[r]

    pos_mask = label_mask & instance_mask  # same label, other samples
    for i in range(batch_size):  # ... and the other view of the same sample
        pos_mask[i, i + batch_size] = 1
        pos_mask[i + batch_size, i] = 1
    neg_mask = ~label_mask

    M = 2 * batch_size - 2
    neg = exp_sim * neg_mask
    imp = (beta * sim / temperature).exp() * neg_mask
    reweight_neg = (imp * neg).sum(dim=-1) / imp.sum(dim=-1)  # E(r): tilted mean of exp(g) over the negatives
    Ng = M * reweight_neg
    pair_loss = -torch.log(exp_sim / (exp_sim + Ng[:, None]))  # log(1 + M exp(-g(r, p)) E(r))
    return (pair_loss * pos_mask).sum() / pos_mask.sum()


def check_reference_loss() -> dict:
    """Reference loss vs ``get_loss("h-scl", beta=1.0, temperature=0.5)`` in float64 on a small batch."""
    generator = torch.Generator().manual_seed(1)
    B, d = 24, 16
    z = torch.randn(B, VIEWS, d, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 5, (B,), generator=generator)
    # both sides see the model's L2-normalised output; gradients are compared w.r.t. the raw projection
    z_ref = z.clone().requires_grad_(True)
    z_hscl = z.clone().requires_grad_(True)
    out = F.normalize(z_ref, dim=-1)
    ref = reference_hscl_loss(out[:, 0], out[:, 1], labels)
    ours = get_loss("h-scl", beta=BETA, temperature=TEMPERATURE)(F.normalize(z_hscl, dim=-1), labels)
    ref.backward()
    ours.backward()
    value_rel = abs(ref.item() - ours.item()) / abs(ours.item())
    grad_rel = ((z_ref.grad - z_hscl.grad).abs().max() / z_hscl.grad.abs().max()).item()
    return {
        "B": B,
        "d": d,
        "reference": ref.item(),
        "hscl": ours.item(),
        "value_rel_diff": value_rel,
        "grad_rel_diff": grad_rel,
        "ok": value_rel <= 1e-6 and grad_rel <= 1e-6,
    }


# --------------------------------------------------------------------------------------------------------------
# the two training loops


class HsclLoop:
    """hscl's step: index uint8 images, batched kornia augmentation, channels_last model, fused H-SCL loss."""

    def __init__(self, workload: Workload, model: nn.Module, batch: int, bf16: bool = False) -> None:
        self.images, self.labels = workload.images, workload.labels
        self.model = model.to(memory_format=torch.channels_last).train()
        self.optimizer = make_optimizer(self.model)
        self.augment = Augment(augment_preset(workload.preset))
        self.loss_fn = get_loss("h-scl", beta=BETA, temperature=TEMPERATURE)
        self.sampler = ViewSampler(workload.labels, batch, pair_mode="instance", views=VIEWS)
        self.bf16 = bf16
        self.batch = batch
        self._batches = self._forever()

    def _forever(self) -> Iterator[Tensor]:
        epoch = 0
        while True:
            yield from self.sampler.batches(epoch)  # (B, V) each
            epoch += 1

    def data(self) -> tuple[Tensor, Tensor]:
        index = next(self._batches)  # (B, V)
        x = self.augment(self.images[index].flatten(0, 1))  # (B*V, C, S, S), sample-major
        return x.contiguous(memory_format=torch.channels_last), self.labels[index[:, 0]]

    def step(self) -> float:
        x, labels = self.data()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            _, z = self.model(x)
            loss = self.loss_fn(z.view(self.batch, VIEWS, -1), labels)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return 0.0  # no time spent waiting on another process

    def close(self) -> None:
        pass


class ReferenceLoop:
    """Research-code step: DataLoader with 2 workers over a per-image PIL dataset, two forward passes, naive
    loss."""

    def __init__(self, workload: Workload, model: nn.Module, batch: int, dataset: PairDataset) -> None:
        self.model = model.train()
        self.optimizer = make_optimizer(self.model)
        self.loader = reference_loader(dataset, batch)
        self._batches = self._forever()

    def _forever(self):
        while True:
            yield from self.loader

    def step(self) -> float:
        start = time.perf_counter()
        pos_1, pos_2, target = next(self._batches)
        waited = time.perf_counter() - start
        _, out_1 = self.model(pos_1)
        _, out_2 = self.model(pos_2)
        loss = reference_hscl_loss(out_1, out_2, target)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return waited

    def close(self) -> None:
        self._batches.close()
        iterator = getattr(self.loader, "_iterator", None)
        if iterator is not None:
            iterator._shutdown_workers()
        del self.loader, self._batches
        gc.collect()


def _system_cpu() -> tuple[float, float] | None:
    """(busy, steal) CPU seconds of the whole machine since boot, from ``/proc/stat`` (Linux), else None."""
    try:
        with open("/proc/stat") as handle:
            fields = [int(v) for v in handle.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


def _own_cpu() -> float:
    """CPU seconds used so far by this process and its live children (the DataLoader workers)."""
    proc = psutil.Process()
    total = sum(proc.cpu_times()[:2])
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += sum(child.cpu_times()[:2])
    return total


class CpuMonitor:
    """Share of the machine's CPU time taken by *other* processes and by hypervisor steal over a window, to
    tell a clean measurement from a disturbed one."""

    def __enter__(self) -> CpuMonitor:
        self._system, self._own, self._start = _system_cpu(), _own_cpu(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        wall = (time.perf_counter() - self._start) * (os.cpu_count() or 1)
        system, own = _system_cpu(), _own_cpu()
        self.other_pct = self.steal_pct = float("nan")
        if self._system is not None and system is not None and wall > 0:
            busy = system[0] - self._system[0]
            self.other_pct = 100.0 * max(0.0, busy - (own - self._own)) / wall
            self.steal_pct = 100.0 * (system[1] - self._system[1]) / wall
        self.load1 = os.getloadavg()[0]


def measure(loop, warmup: int, steps: int, batch: int) -> dict:
    for _ in range(warmup):
        loop.step()
    waited = 0.0
    with CpuMonitor() as monitor:
        start = time.perf_counter()
        for _ in range(steps):
            waited += loop.step()
        seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "img_per_s": steps * batch * VIEWS / seconds,
        "step_ms": 1e3 * seconds / steps,
        "data_wait_ms": 1e3 * waited / steps,
        "other_cpu_pct": monitor.other_pct,
        "steal_pct": monitor.steal_pct,
        "load1": monitor.load1,
    }


# --------------------------------------------------------------------------------------------------------------
# micro-timings for the breakdown


def _median_ms(fn: Callable[[], object], reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def breakdown(workload: Workload, batch: int, dataset: PairDataset, reps: int) -> dict:
    """Median ms per step of each part, for each side, each timed on its own."""
    out: dict = {}
    B = batch

    # hscl
    loop = HsclLoop(workload, make_model(workload), batch)
    x, labels = loop.data()
    out_dim = loop.model(x)[1].shape[1]
    grad_z = torch.randn(B * VIEWS, out_dim)

    def hscl_model():
        loop.optimizer.zero_grad()
        _, z = loop.model(x)
        z.backward(grad_z)

    z_leaf = F.normalize(torch.randn(B, VIEWS, out_dim), dim=-1).requires_grad_(True)

    def hscl_loss():
        z_leaf.grad = None
        loop.loss_fn(z_leaf, labels).backward()

    out["hscl"] = {
        "data_ms": _median_ms(loop.data, reps),
        "model_ms": _median_ms(hscl_model, reps),
        "loss_ms": _median_ms(hscl_loss, reps),
        "optimizer_ms": _median_ms(loop.optimizer.step, reps),
    }

    # reference
    model = make_model(workload).train()
    optimizer = make_optimizer(model)
    collate = torch.utils.data.default_collate
    n = len(dataset)

    def reference_data():
        return collate([dataset[i] for i in random.sample(range(n), B)])

    pos_1, pos_2, target = reference_data()
    grad_1, grad_2 = grad_z[:B], grad_z[B:]

    def reference_model():
        optimizer.zero_grad()
        _, out_1 = model(pos_1)
        _, out_2 = model(pos_2)
        torch.autograd.backward([out_1, out_2], [grad_1, grad_2])

    z1 = F.normalize(torch.randn(B, out_dim), dim=-1).requires_grad_(True)
    z2 = F.normalize(torch.randn(B, out_dim), dim=-1).requires_grad_(True)

    def reference_loss():
        z1.grad = z2.grad = None
        reference_hscl_loss(z1, z2, target).backward()

    out["reference"] = {
        "data_ms": _median_ms(reference_data, max(1, reps // 2)),
        "model_ms": _median_ms(reference_model, reps),
        "loss_ms": _median_ms(reference_loss, reps),
        "optimizer_ms": _median_ms(optimizer.step, reps),
    }
    for side in out.values():
        side["sum_ms"] = sum(side[k] for k in ("data_ms", "model_ms", "loss_ms", "optimizer_ms"))
    return out


# --------------------------------------------------------------------------------------------------------------
# driver


def run_workload(workload: Workload, args) -> dict:
    B = args.batch
    dataset = reference_dataset(workload)
    init = make_model(workload)
    hscl_runs, ref_runs = [], []
    for repeat in range(args.repeats):
        order = ("hscl", "reference") if repeat % 2 == 0 else ("reference", "hscl")
        for side in order:
            if side == "hscl":
                loop = HsclLoop(workload, copy.deepcopy(init), B)
            else:
                loop = ReferenceLoop(workload, copy.deepcopy(init), B, dataset)
            try:
                result = measure(loop, args.warmup, args.steps, B)
            finally:
                loop.close()
                del loop
                gc.collect()
            (hscl_runs if side == "hscl" else ref_runs).append(result)
            print(
                f"  [{workload.name}] repeat {repeat + 1}/{args.repeats} {side:9s}: {result['img_per_s']:8.1f} img/s "
                f"({result['step_ms']:.0f} ms/step, waited on data {result['data_wait_ms']:.0f} ms/step; other "
                f"processes {result['other_cpu_pct']:.0f}% CPU, steal {result['steal_pct']:.0f}%, "
                f"load {result['load1']:.2f}) [{time.strftime('%H:%M:%S')}]",
                flush=True,
            )
    bf16 = None
    if args.bf16_steps > 0:
        loop = HsclLoop(workload, copy.deepcopy(init), B, bf16=True)
        bf16 = measure(loop, 1, args.bf16_steps, B)
        print(
            f"  [{workload.name}] hscl bf16 autocast: {bf16['img_per_s']:8.1f} img/s ({bf16['step_ms']:.0f} ms/step; "
            f"other processes {bf16['other_cpu_pct']:.0f}% CPU, steal {bf16['steal_pct']:.0f}%) "
            f"[{time.strftime('%H:%M:%S')}]",
            flush=True,
        )
        del loop
    with CpuMonitor() as monitor:
        parts = breakdown(workload, B, dataset, args.micro_reps)
    parts["other_cpu_pct"], parts["steal_pct"] = monitor.other_pct, monitor.steal_pct
    hscl_ips = statistics.median(r["img_per_s"] for r in hscl_runs)
    ref_ips = statistics.median(r["img_per_s"] for r in ref_runs)
    return {
        "workload": workload.name,
        "description": workload.description,
        "hscl_img_per_s": hscl_ips,
        "reference_img_per_s": ref_ips,
        "speedup": hscl_ips / ref_ips,
        "hscl_bf16_img_per_s": bf16["img_per_s"] if bf16 else None,
        "hscl_runs": hscl_runs,
        "reference_runs": ref_runs,
        "bf16_run": bf16,
        "breakdown": parts,
        "pass": hscl_ips / ref_ips >= TARGET,
        # the speedup if hscl's step were its model's forward + backward alone
        "ceiling": statistics.median(r["step_ms"] for r in ref_runs) / parts["hscl"]["model_ms"],
    }


def report(results: list[dict], args, check: dict) -> str:
    lines = [
        f"Reference loss check (float64, B={check['B']}, d={check['d']}): reference {check['reference']:.12f}, "
        f"hscl {check['hscl']:.12f}, value rel. diff {check['value_rel_diff']:.2e}, gradient rel. diff "
        f"{check['grad_rel_diff']:.2e} -> {'OK' if check['ok'] else 'MISMATCH'} (tolerance 1e-6)",
        "",
        f"Batch {args.batch} x {VIEWS} views, {args.warmup} warm-up + {args.steps} timed steps, median of "
        f"{args.repeats} repeat(s); torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs; 1-min load average at start {args.load_at_start:.2f}.",
        f"CPU: {cpu_description()}.",
        "",
        "| workload | hscl img/s | reference img/s | speedup | hscl bf16-autocast img/s |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results:
        bf16 = f"{r['hscl_bf16_img_per_s']:.1f}" if r["hscl_bf16_img_per_s"] else "-"
        lines.append(
            f"| {r['workload']} | {r['hscl_img_per_s']:.1f} | {r['reference_img_per_s']:.1f} | "
            f"{r['speedup']:.2f}x | {bf16} |"
        )
    lines += ["", "Workloads:"] + [f"- {r['workload']}: {r['description']}" for r in results]
    lines += [
        "",
        "Per repeat (other processes' CPU and hypervisor steal as % of all cores during the timed steps):",
        "",
        "| workload | side | img/s per repeat | waited on data (ms/step) | other processes % | steal % |",
        "|---|---|---|---|---|---|",
    ]

    def joined(runs: list[dict], key: str, fmt: str) -> str:
        return ", ".join(format(x[key], fmt) for x in runs)

    for r in results:
        for side, runs in (("hscl", r["hscl_runs"]), ("reference", r["reference_runs"])):
            lines.append(
                f"| {r['workload']} | {side} | {joined(runs, 'img_per_s', '.1f')} | "
                f"{joined(runs, 'data_wait_ms', '.0f')} | {joined(runs, 'other_cpu_pct', '.0f')} | "
                f"{joined(runs, 'steal_pct', '.0f')} |"
            )
    lines += [
        "",
        "Breakdown (ms per step of B x 2 images, separate micro-timings, median; reference data = one batch "
        "built in a single process, shared by 2 workers in the real loop; other processes' CPU / steal during "
        "the micro-timings: "
        + ", ".join(
            f"{r['workload']} {r['breakdown']['other_cpu_pct']:.0f}% / {r['breakdown']['steal_pct']:.0f}%"
            for r in results
        )
        + "):",
        "",
        "| workload | side | data + augmentation | model fwd+bwd | loss fwd+bwd | Adam step | sum | measured step |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        for side, runs in (("hscl", r["hscl_runs"]), ("reference", r["reference_runs"])):
            p = r["breakdown"][side]
            step = statistics.median(x["step_ms"] for x in runs)
            lines.append(
                f"| {r['workload']} | {side} | {p['data_ms']:.1f} | {p['model_ms']:.1f} | {p['loss_ms']:.1f} | "
                f"{p['optimizer_ms']:.1f} | {p['sum_ms']:.1f} | {step:.1f} |"
            )
    lines += [
        "",
        "Ceiling: the speedup hscl would reach if everything in its step but the model's forward + backward took "
        "no time (the reference's measured step divided by hscl's model fwd+bwd):",
        "",
    ]
    lines += [f"- {r['workload']}: {r['ceiling']:.2f}x" for r in results]
    lines.append("")
    for r in results:
        verdict = "PASS" if r["pass"] else "FAIL"
        lines.append(f"{verdict}: {r['workload']}: hscl >= {TARGET:g}x reference (measured {r['speedup']:.2f}x)")
    return "\n".join(lines)


def cpu_description() -> str:
    """The CPU's model name and whether it has bf16 matrix hardware (AVX512-BF16 or AMX), from /proc/cpuinfo."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    name = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        return f"{name}; /proc/cpuinfo not readable"
    bf16 = sorted(f for f in flags if f in ("avx512_bf16", "amx_bf16", "amx_tile"))
    isa = "AVX-512" if "avx512f" in flags else ("AVX2" if "avx2" in flags else "no AVX2")
    return f"{name}; {isa}; bf16 hardware: {', '.join(bf16) if bf16 else 'none (no avx512_bf16 / amx_bf16)'}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=None, help="samples per batch B (default 256; 32 with --quick)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per repeat (default 20)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps before timing (default 3)")
    parser.add_argument("--repeats", type=int, default=None, help="repeats of the whole measurement (default 3)")
    parser.add_argument(
        "--bf16-steps", type=int, default=None, help="timed steps of the hscl bf16-autocast run, 0 = skip (default 5)"
    )
    parser.add_argument("--micro-reps", type=int, default=None, help="calls per breakdown micro-timing (default 5)")
    parser.add_argument("--workloads", default="fashion,colour", help="comma-separated: fashion, colour")
    parser.add_argument("--quick", action="store_true", help="smoke test: B=32, 2 steps, 1 warm-up, 1 repeat")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    args = parser.parse_args(argv)
    defaults = (
        {"batch": 32, "steps": 2, "warmup": 1, "repeats": 1, "bf16_steps": 1, "micro_reps": 1}
        if args.quick
        else {"batch": 256, "steps": 20, "warmup": 3, "repeats": 3, "bf16_steps": 5, "micro_reps": 5}
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.batch < 2 or args.steps < 1 or args.warmup < 0 or args.repeats < 1:
        parser.error("need --batch >= 2, --steps >= 1, --warmup >= 0, --repeats >= 1")

    args.load_at_start = os.getloadavg()[0]
    check = check_reference_loss()
    print(
        f"reference loss check: reference={check['reference']:.12f} hscl={check['hscl']:.12f} "
        f"rel diff {check['value_rel_diff']:.2e} (grad {check['grad_rel_diff']:.2e}) "
        f"{'OK' if check['ok'] else 'MISMATCH'}",
        flush=True,
    )
    workloads = build_workloads([w.strip() for w in args.workloads.split(",") if w.strip()])
    results = []
    for workload in workloads:
        print(f"workload {workload.name}: {workload.description}", flush=True)
        results.append(run_workload(workload, args))
    text = report(results, args, check)
    print()
    print(text)
    if args.json:
        payload = {
            "settings": {k: getattr(args, k) for k in ("batch", "steps", "warmup", "repeats", "bf16_steps")},
            "environment": {
                "torch": torch.__version__,
                "python": platform.python_version(),
                "threads": torch.get_num_threads(),
                "cpus": os.cpu_count(),
                "machine": platform.machine(),
                "cpu": cpu_description(),
            },
            "loss_check": check,
            "results": results,
        }
        with open(args.json, "w") as handle:
            json.dump(payload, handle, indent=2)
    return 0 if check["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

"""hscl.engine.runtime.distributed: a 2-process DDP step (gloo, CPU) equals one process on the concatenated batch.

Each case builds the same tiny float64 encoder in both ranks and in the parent; the ranks take their
shard of one batch, step on ``global_batch_loss`` and average the gradients over the ranks as
DistributedDataParallel does (all-reduce, divide by the world size; the Lightning DDP run in
test_train_ddp_cli uses DDP itself). The parent computes the loss and the encoder
gradients of one process on the whole batch; values and gradients must agree to float64 round-off.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from helpers import LEARNS, assert_above_chance, assert_loss_fell, run_losses
from hscl.engine.runtime.distributed import (
    all_gather_rows,
    gather_batch,
    global_batch_loss,
    rank,
    shard,
    shard_sizes,
    world_size,
)
from hscl.losses import get_loss
from sync_counter import SyncCounter

IN_DIM, D, V, B, CLASSES = 6, 5, 2, 12, 3


def _soft_eta(g):
    """A user hardening (generic autograd path): smooth, positive, non-decreasing."""
    return torch.sigmoid(2.0 * g)


#: name -> (method, loss kwargs, sample counts per rank)
CASES: dict[str, tuple[str, dict, tuple[int, int]]] = {
    "h-scl beta": ("h-scl", {"beta": 1.0}, (6, 6)),
    "h-scl beta chunked": ("h-scl", {"beta": 1.0, "chunk_size": 5}, (6, 6)),
    "h-scl threshold": ("h-scl", {"tau": math.exp(0.2 / 0.5)}, (6, 6)),  # some anchors fall back
    "scl uneven shards": ("scl", {}, (7, 5)),
    "ucl": ("ucl", {}, (6, 6)),
    "ucl chunked": ("ucl", {"chunk_size": 7}, (6, 6)),
    "h-ucl debiased chunked": ("h-ucl", {"beta": 0.5, "tau_plus": 0.1, "chunk_size": 4}, (6, 6)),
    "h-scl callable chunked": ("h-scl", {"hardening": _soft_eta, "chunk_size": 5}, (6, 6)),
    "schane": ("schane", {"beta": 1.0}, (6, 6)),
    "supcon": ("supcon", {}, (6, 6)),
}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(IN_DIM, 8), nn.Tanh(), nn.Linear(8, D)).double()


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(B, V, IN_DIM, generator=generator, dtype=torch.float64)
    labels = torch.arange(B) % CLASSES
    return x, labels


def _step(model: nn.Module, loss_fn: nn.Module, x: torch.Tensor, labels: torch.Tensor, forward: nn.Module):
    """One step on ``x`` (b, V, IN_DIM); returns the loss value, the gradients, and #valid anchors."""
    model.zero_grad()
    z = forward(x.flatten(0, 1)).view(x.shape[0], V, D)  # (b, V, d)
    loss = global_batch_loss(loss_fn, z, labels)
    loss.backward()
    stats = getattr(loss_fn, "last_stats", None)
    valid = stats.num_valid_anchors if stats is not None else -1
    return float(loss.detach()), [p.grad.detach().clone() for p in model.parameters()], valid


def _worker(rank_: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank_, world_size=world)
    try:
        assert world_size() == world and rank() == rank_
        x, labels = _batch()
        results = {}
        for name, (method, kwargs, sizes) in CASES.items():
            start = sum(sizes[:rank_])
            mine = slice(start, start + sizes[rank_])
            model = _model()
            value, grads, valid = _step(model, get_loss(method, **kwargs), x[mine], labels[mine], model)
            for grad in grads:  # what DDP does in its backward hooks: the mean over ranks
                dist.all_reduce(grad)
                grad /= world
            results[name] = (value, grads, valid)
        # the gather itself: uneven row counts, rank order, and only the own slot attached
        z = torch.full((rank_ + 2, 3), float(rank_), requires_grad=True)
        global_z, global_labels = gather_batch(z, torch.full((rank_ + 2,), rank_))
        results["gather"] = (
            global_z.detach(),
            global_labels,
            [p.requires_grad for p in all_gather_rows(z)],
            global_z.requires_grad,
        )
        # the shard sizes known on the host (as training knows them): no exchange, no host read
        patch = pytest.MonkeyPatch()
        counter = SyncCounter(patch).install()
        with counter.counting():
            known_z, known_labels = gather_batch(z, torch.full((rank_ + 2,), rank_), sizes=[2, 3])
        patch.undo()
        results["gather_known"] = (known_z.detach(), known_labels, known_z.requires_grad, counter.where)
        torch.save(results, Path(out_dir) / f"rank{rank_}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_process_results():
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(2, str(Path(tmp) / "init"), tmp), nprocs=2, join=True)
        yield [torch.load(Path(tmp) / f"rank{k}.pt") for k in range(2)]


def _one_process(name: str):
    method, kwargs, _ = CASES[name]
    x, labels = _batch()
    model = _model()
    return _step(model, get_loss(method, **kwargs), x, labels, model)


@pytest.mark.parametrize("name", list(CASES))
def test_two_processes_equal_one_process_on_the_concatenated_batch(two_process_results, name):
    value, grads, valid = _one_process(name)
    assert all(g.abs().sum() > 0 for g in grads)  # the reference has something to compare
    for rank_, results in enumerate(two_process_results):
        got_value, got_grads, got_valid = results[name]
        assert got_value == pytest.approx(value, rel=1e-12, abs=1e-12), f"rank {rank_}: loss differs"
        assert got_valid == valid  # the loss's statistics describe the global batch
        for got, want in zip(got_grads, grads):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12, msg=f"rank {rank_}: gradient differs")


def test_one_rank_alone_sees_a_different_loss():
    """The check above can fail: a rank's shard alone has fewer negatives and a different M."""
    value, grads, _ = _one_process("h-scl beta")
    x, labels = _batch()
    model = _model()
    half_value, half_grads, _ = _step(model, get_loss("h-scl", beta=1.0), x[:6], labels[:6], model)
    assert abs(half_value - value) > 1e-3
    assert not torch.allclose(half_grads[0], grads[0])


def test_gather_keeps_rank_order_and_uneven_shards(two_process_results):
    for results in two_process_results:
        global_z, global_labels, parts_require_grad, attached = results["gather"]
        assert global_z.shape == (5, 3)  # 2 rows from rank 0, 3 from rank 1
        torch.testing.assert_close(global_z[:, 0], torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0]))
        assert global_labels.tolist() == [0, 0, 1, 1, 1]
        assert parts_require_grad == [False, False]  # other ranks' rows are values
        assert attached  # this rank's slot keeps its graph


def test_gather_with_known_shard_sizes_reads_nothing_on_the_host(two_process_results):
    assert shard_sizes(5, 2) == [3, 2]  # tensor_split's sizes; rank k of this test holds k + 2 rows instead
    for results in two_process_results:
        want_z, want_labels, _, _ = results["gather"]
        got_z, got_labels, attached, reads = results["gather_known"]
        assert torch.equal(got_z, want_z) and torch.equal(got_labels, want_labels) and attached
        assert reads == []


def test_shard_splits_like_tensor_split():
    for samples in (8, 9, 13):
        for shards in (1, 2, 3, 4):
            slices = [shard(samples, shards, k) for k in range(shards)]
            sizes = [s.stop - s.start for s in slices]
            assert sizes == [len(t) for t in torch.arange(samples).tensor_split(shards)]
            assert slices[0].start == 0 and slices[-1].stop == samples
            assert all(a.stop == b.start for a, b in itertools.pairwise(slices))


def test_shard_rejects_bad_input():
    with pytest.raises(ValueError, match="cannot be split over 4 processes"):
        shard(3, 4, 0)
    with pytest.raises(ValueError, match="shard index"):
        shard(8, 2, 2)


def test_single_process_is_the_plain_loss():
    _, labels = _batch()
    z = torch.randn(B, V, D, dtype=torch.float64)
    loss_fn = get_loss("h-scl", beta=1.0)
    assert world_size() == 1 and rank() == 0
    assert float(global_batch_loss(loss_fn, z, labels)) == float(loss_fn(z, labels))


def test_train_ddp_cli_two_processes(tmp_path):
    """``hscl train --devices 2 --strategy ddp``: Lightning DDP over gloo; rank 0 alone writes the run."""
    sets = []
    for item in [
        "data.dataset=digits",
        "data.train_subset=256",
        "data.test_subset=64",
        "model.encoder=convnet",
        "model.widths=[8, 8, 16, 16]",
        "model.hidden_dim=32",
        "model.projection_dim=8",
        "loss.method=h-scl",
        "loss.beta=1.0",
        "loss.chunk_size=40",
        "train.batch_size=64",
        "train.epochs=2",
        *LEARNS,
        "train.knn_train=128",
        "train.knn_test=64",
        "train.knn_k=10",
        "train.progress=false",
        "diagnostics.probe_size=64",
    ]:
        sets += ["--set", item]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "RANK", "LOCAL_RANK", "WORLD_SIZE")}
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "hscl.cli", "train", *sets, "--devices", "2", "--strategy", "ddp", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Starting with 2 processes" in result.stderr + result.stdout
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]  # one writer: each epoch once
    assert_loss_fell(run_losses(out), what="the loss of the 2-process run")
    for row in rows:  # the kNN monitor (128 images in its bank, 64 queries) scores the embeddings' classes
        assert_above_chance(float(row["knn_top1"]), 10, points=20, what=f"kNN monitor, epoch {row['epoch']}")
    assert json.loads((out / "train_summary.json").read_text())["processes"] == 2
    assert json.loads((out / "precision.json").read_text()) == {"precision": "32-true", "channels_last": False}
    final = torch.load(out / "final.ckpt", map_location="cpu", weights_only=False)
    last = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert final["epoch"] == 2
    for key, value in final["state_dict"].items():  # last.ckpt: the end of the epoch, the same weights
        torch.testing.assert_close(last["state_dict"][key], value, rtol=0, atol=0)
    assert not list((out / "checkpoints").glob("*.tmp"))
    spectrum = (out / "spectrum.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in spectrum[1:]] == ["1", "2"]  # the geometry monitor: rank 0 only
    assert "sync_dist" not in result.stderr  # the logged loss is already global


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.strategy=fsdp", "train.strategy must be auto, ddp, ddp_spawn or ddp_fork"),
        ("train.accelerator=tpu", "train.accelerator must be cpu or gpu"),
        ("train.devices=0", "train.devices and train.num_nodes must be >= 1"),
        ("train.num_nodes=0", "train.devices and train.num_nodes must be >= 1"),
    ],
)
def test_distributed_config_is_validated(override, message):
    from hscl.engine.runtime.config import load_config

    with pytest.raises(ValueError, match=message):
        load_config(None, [override])


def test_global_batch_must_cover_every_process():
    from hscl.engine.runtime.config import load_config

    with pytest.raises(ValueError, match="is the global batch, split over devices x num_nodes = 8"):
        load_config(None, ["train.batch_size=4", "train.devices=4", "train.num_nodes=2"])
    assert load_config(None, ["train.batch_size=8", "train.devices=4", "train.num_nodes=2"]).train.devices == 4


def test_launch_rank_from_the_environment(monkeypatch):
    from hscl.engine.runtime.distributed import launch_rank

    for key in ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert launch_rank(8) == 0
    monkeypatch.setenv("NODE_RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert launch_rank(8) == 11  # Lightning: node 1, local rank 3 of 8
    monkeypatch.setenv("RANK", "5")
    assert launch_rank(8) == 5  # torchrun's global rank wins

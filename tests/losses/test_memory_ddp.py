"""The memory of a loss module under DDP (2 gloo processes on the CPU): every rank enqueues the gathered global
rows, so the memories are bit-identical across ranks, and each step's loss and gradients equal those of one
process on the concatenated batch with the same memory."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from hscl.engine.runtime.distributed import global_batch_loss
from hscl.losses import get_loss

IN_DIM, D, V, B, STEPS = 6, 5, 2, 12, 4
CASES = {
    "h-scl beta": ("h-scl", {"beta": 1.0}),
    "scl chunked": ("scl", {"chunk_size": 5}),
    "h-scl auto": ("h-scl", {"beta": "auto"}),
}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(IN_DIM, 8), nn.Tanh(), nn.Linear(8, D)).double()


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(10 + step)
    return torch.randn(B, V, IN_DIM, generator=generator, dtype=torch.float64), torch.randint(
        0, 3, (B,), generator=generator
    )


def _run(shard: slice | None, world: int) -> list:
    """STEPS steps of each case; per step the loss, the gradients (averaged over ranks) and the memory."""
    results = {}
    for name, (method, kwargs) in CASES.items():
        model, loss_fn = _model(), get_loss(method, memory_size=30, memory_warmup_steps=1, **kwargs)
        steps = []
        for step in range(STEPS):
            x, labels = _batch(step)
            if shard is not None:
                x, labels = x[shard], labels[shard]
            model.zero_grad()
            loss = global_batch_loss(loss_fn, model(x.flatten(0, 1)).view(x.shape[0], V, D), labels)
            loss.backward()
            grads = [p.grad.detach().clone() for p in model.parameters()]
            if world > 1:
                for grad in grads:  # what DDP does: the mean over ranks
                    dist.all_reduce(grad)
                    grad /= world
            memory = loss_fn.memory
            steps.append((float(loss.detach()), grads, memory[0].clone(), memory[1].clone()))
        results[name] = steps
    return results


def _worker(rank_: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank_, world_size=world)
    try:
        half = B // world
        torch.save(_run(slice(rank_ * half, (rank_ + 1) * half), world), Path(out_dir) / f"rank{rank_}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks():
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(2, str(Path(tmp) / "init"), tmp), nprocs=2, join=True)
        yield [torch.load(Path(tmp) / f"rank{k}.pt") for k in range(2)]


@pytest.mark.parametrize("name", list(CASES))
def test_memories_are_identical_and_steps_equal_one_process(ranks, name):
    one = _run(None, 1)[name]
    for step in range(STEPS):
        r0, r1 = ranks[0][name][step], ranks[1][name][step]
        assert torch.equal(r0[2], r1[2]) and torch.equal(r0[3], r1[3]), f"step {step}: the ranks' memories differ"
        value, grads, memory_z, memory_labels = one[step]
        assert memory_z.shape[0] == min(30, (step + 1) * V * B)
        torch.testing.assert_close(r0[2], memory_z, rtol=1e-12, atol=1e-14)
        assert torch.equal(r0[3], memory_labels)
        for rank_ in (0, 1):
            got_value, got_grads = ranks[rank_][name][step][:2]
            assert got_value == pytest.approx(value, rel=1e-11), f"rank {rank_} step {step}: loss differs"
            for got, want in zip(got_grads, grads):
                torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)

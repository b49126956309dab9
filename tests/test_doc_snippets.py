"""The Python snippets of README.md and the docs pages run as written.

Each page's ``python`` blocks run in order in one namespace, which holds the few names a snippet leaves to its
reader (a ``loader`` of two augmented views and labels, a ``model``, an ``optimizer``, embeddings ``z``, ...),
all small. The own-loop snippets are also checked against an independent computation: SCHaNe + cross-entropy
against the fine-tuning engine's objective, ``beta="auto"`` against H-SCL at the beta it chose, and the DDP loop
(two gloo processes) against one process's step on the whole batch.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from hscl import get_loss

ROOT = Path(__file__).resolve().parents[1]
#: the pages whose Python snippets run here (docs/api/backbones.md needs pre-trained weights; distributed.md
#: needs several processes: test_ddp_own_loop_snippet runs it)
PAGES = ("README.md", "docs/index.md", "docs/getting-started.md", "docs/losses.md")
B, C, D, DIM = 8, 3, 16, 8


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(encoding="utf-8"), re.S | re.M)


def _context(page: str) -> dict:
    """The names the snippets of ``page`` use without defining them."""
    torch.manual_seed(0)
    model = nn.Linear(D, DIM)
    rows = 4 if page == "docs/losses.md" else B  # losses.md's multi-hot example has 4 samples
    return {
        "model": model,
        "encoder": nn.Linear(D, 12),
        "head": nn.Linear(12, C),
        "optimizer": torch.optim.SGD(model.parameters(), lr=0.1),
        "loader": [(torch.randn(B, D), torch.randn(B, D), torch.arange(B) % C) for _ in range(3)],
        "z": torch.randn(rows, 2, DIM, requires_grad=True),
        "y": torch.arange(B) % C,
        "embeddings": torch.randn(B, DIM),
        "labels": torch.arange(B) % C,
        "y_multi": torch.rand(B, C) > 0.5,
        "batches": [(torch.randn(4, 2, DIM), torch.arange(4) % 2) for _ in range(3)],
        "epoch": 1,
    }


def _check_schane_and_ce(ns: dict) -> None:
    from hscl.engine.finetune.loop import FinetuneObjective

    h, logits, y = ns["h"], ns["logits"], ns["y"]
    expected, _ = FinetuneObjective("schane", lam=0.9, beta=1.0, temperature=0.5)(logits.view(B, 2, C), h, y)
    assert ns["loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def _check_auto_beta(ns: dict) -> None:
    beta = ns["loss_fn"].hardening.beta
    assert 0 <= beta <= 10
    fixed = get_loss("h-scl", beta=beta)(ns["z"].detach(), ns["y"])  # z: the last batch, before the step
    assert ns["loss"].item() == pytest.approx(fixed.item(), rel=1e-4)


#: a check run after the block holding the key
CHECKS = {"schane(h, y)": _check_schane_and_ce, 'beta="auto", auto_target': _check_auto_beta}


@pytest.mark.parametrize("page", PAGES)
def test_snippets_run(page, capsys):
    blocks = python_blocks(ROOT / page)
    assert blocks, page
    ns = _context(page)
    checked = []
    for number, block in enumerate(blocks, 1):
        try:
            exec(compile(block, f"{page} block {number}", "exec"), ns)
        except Exception as err:  # name the block in the failure
            raise AssertionError(f"{page}, python block {number} fails: {type(err).__name__}: {err}") from err
        for key, check in CHECKS.items():
            if key in block:
                check(ns)
                checked.append(key)
    if page == "docs/losses.md":  # the two own-loop snippets of the loss page are there and were checked
        assert sorted(checked) == sorted(CHECKS)
        assert "beta " in capsys.readouterr().out


_DDP_RUNNER = r"""
import os, sys
import torch
import torch.multiprocessing as mp

def run(rank, world, store, snippet, out):
    import datetime, functools
    torch.set_num_threads(1)
    # the snippet's init_process_group("gloo") meets its peer through a file (no TCP port to race for) and
    # gives up after a minute instead of hanging (the tests of the engine's DDP do the same)
    torch.distributed.init_process_group = functools.partial(
        torch.distributed.init_process_group, init_method=f"file://{store}", rank=rank, world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    from hscl.engine.runtime.distributed import shard
    torch.manual_seed(0)
    encoder = torch.nn.Linear(16, 8)
    g = torch.Generator().manual_seed(1)
    x1, x2, y = torch.randn(12, 16, generator=g), torch.randn(12, 16, generator=g), torch.arange(12) % 3
    part = shard(12, world, rank)
    ns = {"encoder": encoder, "loader": [(x1[part], x2[part], y[part])]}
    exec(snippet, ns)
    if rank == 0:
        weight = ns["model"].module.weight
        torch.save({"weight": weight.detach(), "grad": weight.grad, "loss": ns["loss"].detach()}, out)
    torch.distributed.barrier()
    # leave without tearing gloo down: its destructors can wait forever for a peer that already left
    sys.stdout.flush(), sys.stderr.flush()
    os._exit(0)

if __name__ == "__main__":
    snippet, store, out, world = open(sys.argv[1]).read(), sys.argv[2], sys.argv[3], int(sys.argv[4])
    mp.spawn(run, args=(world, store, snippet, out), nprocs=world)
"""


def test_ddp_own_loop_snippet(tmp_path):
    """distributed.md's own DDP loop, on 2 gloo processes, takes the step of one process on the whole batch."""
    (block,) = [b for b in python_blocks(ROOT / "docs" / "distributed.md") if "global_batch_loss(" in b]
    (tmp_path / "snippet.py").write_text(block)
    (tmp_path / "runner.py").write_text(_DDP_RUNNER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    out, store = tmp_path / "rank0.pt", tmp_path / "store"
    command = [sys.executable, str(tmp_path / "runner.py"), str(tmp_path / "snippet.py"), str(store), str(out), "2"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        _, stderr = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # both ranks, not only the launcher
        proc.communicate()
        raise
    assert proc.returncode == 0, stderr[-3000:]
    result = torch.load(out)

    # one process, the whole batch of 12 samples, the same initial weights and optimizer
    torch.manual_seed(0)
    encoder = nn.Linear(16, 8)
    g = torch.Generator().manual_seed(1)
    x1, x2, y = torch.randn(12, 16, generator=g), torch.randn(12, 16, generator=g), torch.arange(12) % 3
    optimizer = torch.optim.Adam(encoder.parameters(), lr=1e-3)
    loss = get_loss("h-scl", beta=1.0)(torch.stack([encoder(x1), encoder(x2)], 1), y)
    loss.backward()
    optimizer.step()
    assert result["loss"].item() == pytest.approx(loss.item(), rel=1e-5)
    # the gradient after DDP's averaging (Adam's first step hardly depends on its scale: checked apart)
    torch.testing.assert_close(result["grad"], encoder.weight.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(result["weight"], encoder.weight.detach(), rtol=1e-5, atol=1e-6)
    # and a loss on one process's rows alone would have been another number
    half = get_loss("h-scl", beta=1.0)(torch.stack([encoder(x1[:6]), encoder(x2[:6])], 1), y[:6])
    assert abs(half.item() - loss.item()) > 1e-3

"""``benchmarks/gpu_check.py``: the CPU quick form CI runs (every check present, run and reported), and its parts
one by one: the float64 reference against the loop reference of tests/reference.py, loss rows that FAIL on a
wrong value, gradient or PML difference, the verdict, the device rule, the process group of the 2-process run,
the module watch and the synthetic data."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from helpers import assert_above_chance

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
sys.path.insert(0, str(SCRIPT.parent))

import gpu_check  # noqa: E402
import gpu_check_common as common  # noqa: E402
import gpu_check_data  # noqa: E402
import gpu_check_losses as losses  # noqa: E402
import gpu_check_pipelines as pipelines  # noqa: E402
from gpu_check_reference import LOSS_PARAMS, reference_loss  # noqa: E402
from hscl.hardening import Exponential  # noqa: E402
from reference import reference_loss as loop_loss  # noqa: E402
from reference import reference_supcon  # noqa: E402

QUICK_ROWS = (512, 1024, 2048)
TINY = dataclasses.replace(common.QUICK, min_timing_s=0.0, loss_memory_budget=8e6, reference_memory=4e5)


def test_gpu_check_cpu_quick_form(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    report = json.loads(out.read_text())
    rows = {row["check"]: row for row in report["checks"]}
    assert list(rows) == gpu_check.PIPELINES + losses.loss_names(QUICK_ROWS) == report["expected"]
    assert report["complete"] is True and report["problems"] == []
    for name, row in rows.items():
        status = row["status"]
        assert status == "ok" or (status.startswith("skipped: ") and name.startswith(gpu_check.MAY_SKIP)), row
        assert row["device"] == "cpu" and row["seconds"] >= 0, row
    data, pretrain, few = rows["data"]["metrics"], rows["pretrain"]["metrics"], rows["few-shot"]["metrics"]
    assert data["distinct_fraction"] == 1.0 and data["pixel_knn_top1"] < gpu_check_data.MAX_PIXEL_KNN
    assert pretrain["knn_top1"] >= pretrain["knn_chance"] + pipelines.KNN_MARGIN
    assert_above_chance(rows["evaluate"]["metrics"]["knn_top1"], 10, what="evaluate kNN")  # the 10 classes
    assert "on cpu in float32" in pretrain["module_outputs"] or "on cpu in bfloat16" in pretrain["module_outputs"]
    assert few["5shot_accuracy"] >= few["required"] > few["chance"] and "on cuda" not in few["module_outputs"]
    assert rows["ddp (2 GPUs)"]["status"].startswith("skipped: needs 2 CUDA GPUs")
    for r in QUICK_ROWS:
        assert rows[f"floor {r}"]["metrics"]["median_ms"] > 0
        for m in losses.HSCL_METHODS:
            metrics = rows[f"loss {m} {r}"]["metrics"]
            assert metrics["float32_matmul"] == "ieee" and metrics["ratio_to_floor"] > 0
            assert metrics["ref_loss_rel_err"] <= 1e-5 and metrics["ref_grad_rel_err"] <= 1e-4, metrics
            assert metrics["chunk_size"] == losses.plan_chunk(m, r, common.QUICK.loss_memory_budget)
        if rows[f"loss pml-supcon {r}"]["status"] == "ok":
            assert rows[f"loss supcon {r}"]["metrics"]["pml_loss_rel_diff"] <= 1e-5
            assert rows[f"loss supcon {r}"]["metrics"]["pml_grad_rel_diff"] <= 1e-4
            assert rows[f"loss supcon {r}"]["metrics"]["pml_ref_loss_rel_err"] <= 1e-5
    assert losses.plan_chunk("h-scl", 2048, common.QUICK.loss_memory_budget) is not None  # the chunked path ran
    for m in losses.HSCL_METHODS:
        metrics = rows[f"loss {m} 512 3-class"]["metrics"]
        assert metrics["classes"] == 3 and metrics["chunk_size"] == 128 and metrics["ref_grad_rel_err"] <= 1e-4
    lines = proc.stdout.splitlines()
    table = [line for line in lines if line.startswith("| ")]
    assert len(table) == 1 + len(rows) and "float64 ref. error" in table[0] and "x floor" in table[0]
    assert any(line.startswith("| loss supcon 512 |") and line.count("e-") >= 4 for line in table)
    assert lines[-1] == "verdict: PASS"


@pytest.mark.parametrize("classes", [4, 2])
@pytest.mark.parametrize("method", ["h-scl", "scl", "supcon"])
def test_reference_matches_the_loop_reference(method, classes):
    """The blocked float64 reference against tests/reference.py's loops (no code shared), value and gradient."""
    torch.manual_seed(classes)
    z = torch.randn(7, 2, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.arange(7) % classes
    value, grad = reference_loss(method, z, labels, chunk=3)
    params = LOSS_PARAMS[method]
    if method == "supcon":
        loop = reference_supcon(z, labels, **params)
    else:
        hardening = Exponential(params["beta"]) if "beta" in params else None
        loop = loop_loss(
            z,
            labels,
            positives="labels",
            negatives="supervised",
            hardening=hardening,
            temperature=params["temperature"],
        )
    (loop_grad,) = torch.autograd.grad(loop, z)
    assert value == pytest.approx(float(loop.detach()), rel=1e-12)
    torch.testing.assert_close(grad, loop_grad, rtol=1e-10, atol=1e-12)


def test_loss_rows_pass_and_report_on_the_device(device):
    bench = losses.LossBench(device, TINY)
    checks = common.Checks()
    checks.run("floor", str(device), lambda: bench.floor(512))
    checks.run("pml", str(device), lambda: bench.pml_row(512))
    row = checks.run("supcon", str(device), lambda: bench.hscl_row("supcon", 512))
    tiles = checks.run("h-scl", str(device), lambda: bench.hscl_row("h-scl", 256, classes=3, chunk=64))
    assert row.status == "ok" and tiles.status == "ok", (row, tiles)
    tol = losses.TOLERANCE[row.metrics["float32_matmul"]]
    assert row.metrics["ref_loss_rel_err"] <= tol["loss"] and row.metrics["ref_grad_rel_err"] <= tol["grad"]
    assert row.metrics["chunk_size"] == losses.plan_chunk("supcon", 512, TINY.loss_memory_budget) == 256
    assert row.metrics["ratio_to_floor"] > 0 and tiles.metrics["chunk_size"] == 64
    if checks.rows[1].status == "ok":
        assert row.metrics["pml_loss_rel_diff"] <= losses.PML_TOLERANCE[row.metrics["float32_matmul"]]["loss"]


@pytest.mark.parametrize("wrong", ["value", "gradient"])
def test_a_wrong_loss_makes_its_row_fail(monkeypatch, device, wrong):
    real = losses.make_loss

    def wrong_loss(method, chunk_size):
        fn = real(method, chunk_size)
        if wrong == "value":
            return lambda z, labels: fn(z, labels) * 1.01
        return lambda z, labels: fn(z, labels) + 1e-2 * (z - z.detach()).sum()  # the same value

    monkeypatch.setattr(losses, "make_loss", wrong_loss)
    row = common.Checks().run("h-scl", str(device), lambda: losses.LossBench(device, TINY).hscl_row("h-scl", 256))
    assert row.status.startswith("FAILED: CheckFailedError: float64 reference"), row.status
    error = row.metrics["ref_loss_rel_err" if wrong == "value" else "ref_grad_rel_err"]
    assert error > losses.TOLERANCE[row.metrics["float32_matmul"]]["loss" if wrong == "value" else "grad"]
    assert "ms" in row.key  # the row keeps its numbers


def test_a_supcon_off_from_pml_fails():
    bench = losses.LossBench(torch.device("cpu"), TINY)
    z, labels = losses.loss_inputs(256, common.CLASSES, bench.device)
    scale = LOSS_PARAMS["supcon"]["base_temperature"] / LOSS_PARAMS["supcon"]["temperature"]
    value, grad = reference_loss("supcon", z, labels, 256)
    bench.pml[256] = {"z": z, "labels": labels, "value": value * scale * 1.01, "grad": grad * scale, "ms": 1.0}
    row = common.Checks().run("supcon", "cpu", lambda: bench.hscl_row("supcon", 256))
    assert row.status.startswith("FAILED: CheckFailedError: PML SupConLoss: loss differs 9.9e-03"), row.status
    assert row.metrics["pml_grad_rel_diff"] < 1e-5 and row.metrics["ref_loss_rel_err"] < 1e-5
    assert row.metrics["pml_ref_loss_rel_err"] == pytest.approx(0.01, rel=1e-9)  # PML's own error, 1%


def test_chunk_sizes_follow_the_memory_budget():
    assert losses.plan_chunk("h-scl", 8192, 2e9) is None  # 24 B x 8192^2 = 1.6 GB
    assert losses.plan_chunk("h-scl", 65536, 2e9) == 1024 and 24 * 1024 * 65536 <= 2e9 < 24 * 2048 * 65536
    assert losses.plan_chunk("supcon", 65536, 2e9) == 512
    assert losses.floor_chunk(65536, 2e9) == 4096 and losses.floor_chunk(8192, 2e9) == 8192
    with pytest.raises(common.SkipError, match="chunk_size 32 < 64"):
        losses.plan_chunk("h-scl", 4096, 24 * 32 * 4096)
    assert losses.matmul_mode(torch.device("cpu")) == "ieee"


def _rows(statuses: dict[str, str]) -> list[common.Row]:
    return [common.Row(name, "cuda:0", status, 1.0, "-") for name, status in statuses.items()]


def test_the_verdict_cannot_pass_vacuously():
    expected = ["data", "pretrain", "graph fold", "loss pml-supcon 512", "loss h-scl 512"]
    good = {"data": "ok", "pretrain": "ok", "graph fold": "skipped: x", "loss pml-supcon 512": "skipped: y"}
    assert gpu_check.verdict(_rows({**good, "loss h-scl 512": "ok"}), expected) == []
    assert gpu_check.verdict(_rows(good), expected) == ["missing: loss h-scl 512"]
    assert gpu_check.verdict(_rows({**good, "loss h-scl 512": "skipped: too large"}), expected) == [
        "skipped but required: loss h-scl 512"
    ]
    assert gpu_check.verdict(_rows({**good, "loss h-scl 512": "FAILED: x"}), expected) == ["loss h-scl 512 FAILED"]
    nothing = {name: "skipped: no" for name in expected}
    assert "no check ran ok" in gpu_check.verdict(_rows(nothing), expected)
    assert gpu_check.verdict([], expected)[0].startswith("missing: data, pretrain")
    assert gpu_check.verdict(_rows({**good, "loss h-scl 512": "ok", "x": "ok"}), expected) == ["unexpected: x"]


def _fake_train(precision: str, knn: float, autocast: torch.dtype | None):
    """A stand-in for hscl.engine.pretrain.run.train: one Linear on the CPU (under autocast to ``autocast``), then the
    files a run writes."""

    def train(config, run_dir, data=None):
        with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            torch.nn.Linear(2, 2)(torch.randn(1, 2))
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True)
        (run_dir / "metrics.csv").write_text(f"loss,images_per_s,epoch_seconds,knn_top1\n4.5,100,1,{knn}\n")
        summary = {"precision": precision, "channels_last": True, "deterministic": False}
        (run_dir / "train_summary.json").write_text(json.dumps(summary))
        return run_dir / "final.ckpt"

    return train


@pytest.mark.parametrize(
    ("bf16", "precision", "autocast", "knn", "failed"),
    [
        (None, "32-true", None, 40.0, None),  # the CPU: reported, not checked
        (None, "32-true", None, 29.0, "kNN top-1 29.0% is not chance 10% + 20 points"),
        (True, "32-true", None, 90.0, "expected bf16-mixed with bfloat16 modules, got 32-true with ['float32']"),
        (True, "bf16-mixed", torch.bfloat16, 90.0, None),
        (False, "bf16-mixed", torch.bfloat16, 90.0, "expected 16-mixed with float16 modules, got bf16-mixed"),
    ],
)
def test_pretrain_checks_precision_and_knn(monkeypatch, tmp_path, bf16, precision, autocast, knn, failed):
    """The GPU branch of the precision check, on the CPU: the watch's device is renamed to cuda:0."""
    import hscl.engine.pretrain.run

    monkeypatch.setattr(hscl.engine.pretrain.run, "train", _fake_train(precision, knn, autocast))
    monkeypatch.setattr(pipelines, "native_bf16", lambda device: bf16)
    real_hook = common.ModuleWatch._hook

    def on_cuda(self, module, args, output):  # what a GPU run records
        real_hook(self, module, args, output)
        self.seen = type(self.seen)({("cuda:0", t): n for (_, t), n in self.seen.items()})

    if bf16 is not None:
        monkeypatch.setattr(common.ModuleWatch, "_hook", on_cuda)
    data = type("Data", (), {"num_classes": 10, "train_labels": [0] * 8})()
    pipes = pipelines.Pipelines(torch.device("cpu" if bf16 is None else "cuda"), common.QUICK, data, tmp_path)
    row = common.Checks().run("pretrain", "x", pipes.pretrain)
    if failed is None:
        assert row.status == "ok" and row.metrics["precision"] == precision, row
    else:
        assert row.status.startswith(f"FAILED: CheckFailedError: {failed}"), row.status


@pytest.mark.parametrize(
    ("device", "accuracy", "failed"),
    [
        ("cpu", 90.0, None),
        ("cpu", 55.0, "5-shot 55.0% not"),
        ("cuda", 90.0, "asked for cuda, its modules ran on ['cpu']"),
    ],
)
def test_few_shot_checks_its_device_and_chance(monkeypatch, tmp_path, device, accuracy, failed):
    import hscl.engine.finetune.fewshot

    def fake_few_shot(model, data, classes, configs, fewshot, progress, device):
        torch.nn.Linear(2, 2)(torch.randn(1, 2))  # on the CPU
        return {5: [{"accuracy": {"supcon+ce": accuracy}}] * fewshot.episodes}

    monkeypatch.setattr(hscl.engine.finetune.fewshot, "few_shot", fake_few_shot)
    pipes = pipelines.Pipelines(torch.device(device), common.QUICK, type("D", (), {"num_classes": 10})(), tmp_path)
    pipes.final, pipes.task = tmp_path, type("Task", (), {"model": None})()
    row = common.Checks().run("few-shot", device, pipes.few_shot)
    if failed is None:
        assert row.status == "ok" and row.device == "cpu" and row.metrics["required"] == pytest.approx(57.07, abs=0.01)
    else:
        assert row.status.startswith(f"FAILED: CheckFailedError: {failed}"), row.status


def test_check_ranks_of_a_two_process_run():
    rank = {"rank": 0, "world_size": 2, "pid": 10, "devices": ["cuda:0"]}
    other = {"rank": 1, "world_size": 2, "pid": 11, "devices": ["cuda:1"]}
    assert pipelines.check_ranks([rank, other], "cuda") == []
    assert pipelines.check_ranks([rank], "cuda") == ["expected ranks 0 and 1 in 2 processes, got [(0, 10)]"]
    assert pipelines.check_ranks([rank, {**other, "pid": 10}], "cuda")[0].startswith("expected ranks 0 and 1")
    assert pipelines.check_ranks([rank, {**other, "world_size": 1}], "cuda") == ["rank 1 ran in a process group of 1"]
    assert pipelines.check_ranks([rank, {**other, "devices": ["cuda:0"]}], "cuda") == [
        "rank 1 ran its modules on ['cuda:0'], not ['cuda:1']"
    ]
    assert pipelines.check_ranks([{**rank, "devices": ["cpu", "cuda:0"]}, other], "cuda") == []
    assert pipelines.check_ranks([{**rank, "devices": ["cpu"]}, other], "cuda") == [
        "rank 0 ran its modules on ['cpu'], not ['cuda:0']"
    ]
    assert pipelines.check_ranks([{**rank, "devices": ["cpu"]}, {**other, "devices": ["cpu"]}], "cpu") == []


# a parent that starts a child (as Lightning starts rank 1) and writes both pids
RANKS = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep({child_s})"])
open(sys.argv[1], "w").write(f"{{os.getpid()}} {{child.pid}}")
time.sleep({parent_s})
"""


def _gone(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_timed_out_run_ends_both_ranks(tmp_path):
    script, pids = tmp_path / "ranks.py", tmp_path / "pids"
    script.write_text(RANKS.format(child_s=120, parent_s=120))
    start = time.monotonic()
    with pytest.raises(common.CheckFailedError, match="timed out after 3 s"):
        pipelines.run_group([sys.executable, str(script), str(pids)], 3.0, tmp_path / "log")
    assert time.monotonic() - start < 30
    parent, child = (int(p) for p in pids.read_text().split())
    assert _gone(parent) and _gone(child)


def test_a_run_waits_for_its_other_rank(tmp_path):
    """rank 0 exits first: the other rank is left to finish (not killed), then the exit code is returned."""
    script, pids = tmp_path / "ranks.py", tmp_path / "pids"
    script.write_text(RANKS.format(child_s=2, parent_s=0))
    start = time.monotonic()
    assert pipelines.run_group([sys.executable, str(script), str(pids)], 60.0, tmp_path / "log") == 0
    assert time.monotonic() - start >= 2


@pytest.mark.slow
def test_the_two_process_run_on_the_cpu(tmp_path):
    """The ddp row's path with 2 CPU processes over gloo: both ranks report, in a process group of 2."""
    data, _ = gpu_check_data.load_images(common.QUICK)
    pipes = pipelines.Pipelines(torch.device("cpu"), common.QUICK, data, tmp_path)
    where, key, metrics = pipes.ddp(quick=True, device="cpu")
    assert where == "2x cpu" and "over 2 processes" in key, key
    assert sorted((r["rank"], r["world_size"], r["devices"][0]) for r in metrics["ranks"]) == [
        (0, 2, "cpu"),
        (1, 2, "cpu"),
    ]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
@pytest.mark.parametrize("args", [[], ["--device", "cuda"], ["--device", "cuda", "--quick"]])
def test_cuda_without_a_gpu_fails_in_one_line(args):
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().startswith("gpu_check: --device cuda needs a CUDA GPU") and proc.stderr.count("\n") == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_bench_compile_on_cuda_without_a_gpu_fails_in_one_line():
    bench = ROOT / "benchmarks" / "bench_compile.py"
    proc = subprocess.run([sys.executable, str(bench), "--device", "cuda"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("bench_compile: --device cuda needs a CUDA GPU") and proc.stderr.count("\n") == 1


def test_make_gpu_check_asks_for_cuda_and_no_local_cpu_wheel():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    proc = subprocess.run(["make", "-n", "-B", "gpu-check"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert "benchmarks/gpu_check.py --device cuda" in lines[-1]
    assert not any("find-links" in line or "constraints.txt" in line for line in lines), lines


def test_module_watch_sees_devices_and_dtypes():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 2))
    with common.ModuleWatch() as watch:
        model(torch.randn(2, 3, 8, 8))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(torch.randn(2, 3, 8, 8))
    model(torch.randn(2, 3, 8, 8))  # closed: not counted
    assert watch.seen == {("cpu", "float32"): 2, ("cpu", "bfloat16"): 2} and watch.world is None
    assert pipelines.expected_precision(torch.device("cpu")) == (None, None)


def test_synthetic_images_are_learnable_but_not_trivial():
    data = gpu_check_data.synthetic_cifar(2000, 500)
    assert gpu_check_data.distinct_fraction(data.train_images) == 1.0
    for c in range(common.CLASSES):  # no class is one image repeated
        members = data.train_images[data.train_labels == c].float()
        assert members.std(0).mean() > 20
    knn = gpu_check_data.pixel_knn(data.train_images, data.train_labels, data.test_images, data.test_labels)
    assert 100 / common.CLASSES + 20 < knn < gpu_check_data.MAX_PIXEL_KNN
    assert gpu_check_data.data_row(data, common.QUICK)[2]["distinct_fraction"] == 1.0
    copies = dataclasses.replace(data, train_images=data.train_images[data.train_labels])  # 10 images repeated
    row = common.Checks().run("data", "cpu", lambda: gpu_check_data.data_row(copies, common.QUICK))
    assert row.status.startswith("FAILED: CheckFailedError: only 0.5% of the training images are distinct"), row.status


def test_the_gpu_run_script_is_one_bounded_command():
    text = (ROOT / "benchmarks" / "gpu_run.sh").read_text()
    assert "--device cuda --json $OUT/gpu_check.json" in text and "timeout" in text
    proc = subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_run.sh")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert textwrap.dedent(text).count("pytest -q -m gpu") == 1
    assert "bench_compile.py --device cuda" in text  # the compiled training step on the GPU, in the same command

"""``benchmarks/gpu_check.py --device cpu --quick``, the form CI runs of ``make gpu-check``: every pipeline runs on
the CPU, every check is in the JSON, and each is ok or skipped with a reason (none FAILED: exit code 0)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import assert_above_chance

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
PIPELINES = ["pretrain", "evaluate", "diagnostics", "finetune", "few-shot", "graph fold", "ddp (2 GPUs)"]
LOSSES = [f"loss {m} {rows}" for rows in (512, 1024, 2048) for m in ("pml-supcon", "h-scl", "scl", "supcon")]


def test_gpu_check_cpu_quick_form(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    report = json.loads(out.read_text())
    rows = {row["check"]: row for row in report["checks"]}
    assert list(rows) == PIPELINES + LOSSES
    for name, row in rows.items():
        status = row["status"]
        assert status == "ok" or (status.startswith("skipped: ") and len(status) > len("skipped: ")), (name, status)
        assert row["device"] == "cpu" and row["seconds"] >= 0, row
    # the rows that must run on any machine: the image pipelines, and hscl's losses
    for name in ["pretrain", "evaluate", "diagnostics", "finetune", "few-shot"]:
        assert rows[name]["status"] == "ok", rows[name]
    for name in LOSSES:
        if "pml" not in name:
            assert rows[name]["status"] == "ok" and rows[name]["metrics"]["median_ms"] > 0, rows[name]
    assert rows["ddp (2 GPUs)"]["status"].startswith("skipped: needs 2 CUDA GPUs")
    assert 0 <= rows["evaluate"]["metrics"]["linear_top1"] <= 100
    for name in ("pretrain", "evaluate"):  # the monitor's and the evaluation's kNN score the 10 classes
        assert_above_chance(rows[name]["metrics"]["knn_top1"], 10, what=f"{name} kNN")
    assert rows["pretrain"]["metrics"]["images_per_s"] > 0
    header = report["header"]
    assert header["device"] == "cpu" and header["form"] == "quick" and header["cpu"] and "cpu_bf16" in header
    # the table as printed: one line per check
    assert sum(line.startswith("| ") for line in proc.stdout.splitlines()) == 1 + len(rows)

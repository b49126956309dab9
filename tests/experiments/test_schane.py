"""``hscl reproduce schane`` (SCHaNe vs CE): a tiny preset end to end, its outputs, resume and bad settings."""

from __future__ import annotations

import json

import pytest
import torch

from hscl.cli import main


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tiny models run fastest on one thread (and do not fight other processes for cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_reproduce_schane_on_a_tiny_preset(tmp_path, capsys):
    preset = tmp_path / "configs" / "schane"
    preset.mkdir(parents=True)
    pretrain = {
        "data": {"dataset": "digits"},
        "model": {"encoder": "convnet", "widths": [8, 16, 16, 32], "hidden_dim": 32, "projection_dim": 16},
        "loss": {"method": "h-scl", "beta": 1.0},
        "train": {"epochs": 1, "batch_size": 64, "knn_train": 100, "knn_test": 50, "knn_k": 10, "precision": "32",
                  "channels_last": False, "progress": False},
    }  # fmt: skip
    experiment = {
        "name": "tiny",
        "pretrain": pretrain,
        "finetune": {"epochs": 1, "batch_size": 64},
        "full": {"train_subset": 200, "test_subset": 100, "seeds": [0]},
        "fewshot": {"shots": [1, 3], "episodes": 2, "steps": 2, "queries": 4},
        "embedding_points": 60,
    }
    (preset / "tiny.yaml").write_text(json.dumps(experiment))  # JSON is YAML
    out = tmp_path / "out"
    args = ["reproduce", "schane", "--preset", "tiny", "--configs", str(tmp_path / "configs"), "--out", str(out)]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["fewshot"]) == {"1", "3"}
    assert {"diff_vs_ce", "diff_ci95"} <= set(results["full"]["schane"])
    for name in ("schane.csv", "schane.md", "fewshot.png", "fewshot.csv", "tsne.png", "tsne.csv"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "tsne.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    emb = results["embedding"]
    assert all(0 < emb["isotropy_features"][o] <= 1 for o in ("ce", "schane"))
    assert "5-way 3-shot" in (out / "schane.md").read_text()
    stamp = (out / "full" / "ce" / "seed0" / "result.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0  # finished parts are reused
    assert (out / "full" / "ce" / "seed0" / "result.json").stat().st_mtime_ns == stamp
    assert "pre-training: cached" in capsys.readouterr().out
    bad = [*args, "--set", "heldout_classes=[4, 5]"]
    assert main(bad) == 2

"""One loaded dataset is reused across runs only when its splits are the same: ``data_key`` holds the seed."""

from __future__ import annotations

from hscl.engine.pretrain.datamodule import data_key
from hscl.engine.runtime.config import load_config
from hscl.engine.runtime.paths import PRESETS
from hscl.experiments import table1

SCL = PRESETS / "table1/quick/scl.yaml"


def test_data_key_tells_apart_what_the_splits_depend_on():
    base = load_config(SCL)
    assert data_key(base) == data_key(
        load_config(PRESETS / "table1/quick/h-scl-beta.yaml")
    )  # another loss, the same data
    for change in ("train.seed=1", "eval.val_fraction=0.2", "data.train_subset=500", "data.test_subset=100"):
        assert data_key(load_config(SCL, [change])) != data_key(base), change


def test_table1_draws_each_seeds_subset(tmp_path, monkeypatch):
    """Two seeds, two methods: one dataset per seed (drawn with it), each run trains on its own seed's draw."""
    loaded, used = [], []

    def fake_load(config):
        loaded.append(config.train.seed)
        return f"data of seed {config.train.seed}"

    def fake_run(config, run_dir, data):
        used.append((config.loss.method, config.train.seed, data))
        return {"linear_top1": 1.0, "linear_top5": 1.0, "knn_top1": 1.0, "train_seconds": 1.0, "curve": []}

    monkeypatch.setattr("hscl.engine.pretrain.run.load_data", fake_load)
    monkeypatch.setattr(table1, "_run_one", fake_run)
    monkeypatch.setattr(table1, "run_numerics", lambda run_dir: {})
    table1.reproduce_table1("quick", tmp_path / "out", seeds=[0, 1], methods=["scl", "ucl"])
    assert used, "no run was started"
    for method, seed, data in used:
        assert data == f"data of seed {seed}", (method, seed, data)
    assert sorted(set(loaded)) == [0, 1]

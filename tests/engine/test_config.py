"""Run configs: typed loading, overrides, loud errors, and every YAML under configs/."""

from __future__ import annotations

import pytest

from hscl.engine.config import load_config
from hscl.experiments.presets import packaged_configs
from hscl.experiments.table1 import TABLE1_ORDER, find_preset

CONFIGS = sorted((packaged_configs() / "table1").rglob("*.yaml"))  # run configs of Table I


def test_there_is_a_config_for_every_cell_of_table1():
    for preset in ["cifar10", "cifar100", "stl10", "tiny-imagenet", "quick"]:
        assert list(find_preset(preset)) == list(TABLE1_ORDER)


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(p.parents[1])) for p in CONFIGS])
def test_every_config_file_loads_and_validates(path):
    config = load_config(path)
    assert config.train.lr == 1e-3 and config.train.weight_decay == 1e-6
    assert config.loss.temperature == 0.5
    if "quick" not in str(path):  # the paper's settings
        assert config.train.epochs == 200 and config.train.batch_size == 512
        assert config.model.encoder == "resnet50" and config.model.projection_dim == 128


def test_overrides_and_types(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("loss:\n  method: h-scl\n  beta: 2\ntrain:\n  epochs: 3\n")
    config = load_config(path, ["train.epochs=5", "loss.beta=0.5", "data.dataset=digits"])
    assert config.train.epochs == 5 and config.loss.beta == 0.5 and config.data.dataset == "digits"
    assert isinstance(config.loss.beta, float)
    config = load_config(None, ["loss.method=h-scl", "loss.tau_schedule=[-0.5, 0.1]"])
    assert config.loss.tau_schedule == [-0.5, 0.1]


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["train.epoch=5"], "unknown key.*epoch; valid keys: epochs"),
        (["trian.epochs=5"], "unknown key.*trian"),
        (["train.epochs=five"], "train.epochs must be an integer"),
        (["train.epochs=0"], "train.epochs must be >= 1"),
        (["loss.method=hscl"], "loss.method 'hscl' is unknown; valid: ucl, h-ucl"),
        (["loss.method=scl", "loss.beta=1"], "loss.beta is a hardening; method 'scl' has none"),
        (["loss.beta=1", "loss.tau=2"], "at most one of"),
        (["data.pair_mode=pairs"], "data.pair_mode must be"),
        (["train.precision=fp16"], "train.precision must be"),
        (["train"], "must look like section.key=value"),
    ],
)
def test_bad_configs_fail_loudly(overrides, match):
    with pytest.raises((ValueError, TypeError), match=match):
        load_config(None, overrides)


def test_missing_config_file():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config("no/such/file.yaml")

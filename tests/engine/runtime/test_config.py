"""Run configs: typed loading, overrides, loud errors, and every YAML under configs/."""

from __future__ import annotations

import pytest

from hscl.engine.runtime.config import load_config
from hscl.experiments.methods import TABLE1_ORDER
from hscl.experiments.presets import packaged_configs
from hscl.experiments.table1 import find_preset

CONFIGS = sorted((packaged_configs() / "table1").rglob("*.yaml"))  # run configs of Table I


def test_there_is_a_config_for_every_cell_of_table1():
    for preset in ["cifar10", "cifar100", "stl10", "tiny-imagenet", "quick"]:
        assert list(find_preset(preset)) == list(TABLE1_ORDER)


@pytest.mark.parametrize(
    ("method", "pairs"),
    [
        ("ucl", "instance"),
        ("h-ucl", "instance"),
        ("scl", "same_label"),
        ("h-scl", "same_label"),
        ("supcon", "instance"),
        ("schane", "instance"),
    ],
)
def test_data_pair_mode_auto_pairs_same_label_for_scl_and_h_scl_only(method, pairs):
    """The H-SCL paper samples two images of one class for SCL and H-SCL; the others pair views of one image."""
    from hscl.engine.pretrain.datamodule import pair_mode_for

    assert pair_mode_for(load_config(None, [f"loss.method={method}"])) == pairs
    assert pair_mode_for(load_config(None, [f"loss.method={method}", "data.pair_mode=instance"])) == "instance"


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


# --------------------------------------------------------------------------------------------
# scientific notation (YAML 1.1 reads 1e-3 as a string)

SCIENTIFIC = [("1e-3", 1e-3), ("5e-4", 5e-4), ("1E4", 1e4), ("-2.5e-1", -0.25), ("+1e3", 1e3), ("2.5E+1", 25.0)]


@pytest.mark.parametrize("text,value", SCIENTIFIC)
def test_float_fields_take_scientific_notation_from_set(text, value):
    config = load_config(None, [f"train.lr={abs(value)}", f"train.weight_decay={text}", "loss.method=h-scl"])
    assert config.train.weight_decay == value and isinstance(config.train.weight_decay, float)
    config = load_config(None, [f"loss.tau_schedule=[{text}, 0.1]", "loss.method=h-scl"])
    assert config.loss.tau_schedule == [value, 0.1]


@pytest.mark.parametrize("text,value", SCIENTIFIC)
def test_float_fields_take_scientific_notation_from_yaml(tmp_path, text, value):
    path = tmp_path / "c.yaml"
    path.write_text(f"loss:\n  method: h-scl\n  temperature: {text}\ntrain:\n  lr: 3e-4\n  weight_decay: {text}\n")
    config = load_config(path)
    assert config.train.lr == 3e-4 and config.train.weight_decay == value and config.loss.temperature == value


def test_the_yaml_loader_reads_scientific_notation_and_stays_safe():
    from hscl.engine.runtime.config import load_yaml

    assert load_yaml("a: 1e-3\nb: 5E-4\nc: 1.0e3\nd: '1e-3'\ne: 1e\nf: 12\ng: 0.5\n") == {
        "a": 1e-3,
        "b": 5e-4,
        "c": 1e3,
        "d": "1e-3",  # quoted: a string, as the author asked
        "e": "1e",
        "f": 12,
        "g": 0.5,
    }
    with pytest.raises(Exception, match="could not determine a constructor"):
        load_yaml("!!python/object/apply:os.system ['true']")


def test_float_fields_accept_numeric_strings_from_any_yaml_reader():
    """Data read by plain ``yaml.safe_load`` (a user's own loader) still gets 1e-3 as a float."""
    import yaml

    from hscl.engine.runtime.config import RunConfig, config_from_dict

    data = yaml.safe_load("train:\n  lr: 1e-3\n  epochs: 1e2\nloss:\n  beta: 5E-4\n  method: h-scl\n")
    assert data["train"]["lr"] == "1e-3"  # YAML 1.1
    config = config_from_dict(data, RunConfig)
    assert (config.train.lr, config.train.epochs, config.loss.beta) == (1e-3, 100, 5e-4)


@pytest.mark.parametrize(
    "override,match",
    [
        ("train.lr=1e-3x", "train.lr must be a number, got '1e-3x'"),
        ("train.lr=fast", "train.lr must be a number, got 'fast'"),
        ("train.lr=e-3", "train.lr must be a number, got 'e-3'"),
        ("train.lr=true", "train.lr must be a number, got True"),
        ("train.lr=[1e-3]", "train.lr must be a number"),
        ("train.epochs=1e-3", "train.epochs must be an integer, got 0.001"),
        ("train.epochs=1.5e0", "train.epochs must be an integer, got 1.5"),
        ("train.epochs=2.5", "train.epochs must be an integer, got 2.5"),
        ("train.epochs=1e400", "train.epochs must be an integer, got inf"),
        ("loss.beta=1e-3e", "loss.beta: '1e-3e' is not a valid value"),
    ],
)
def test_what_is_not_a_number_is_refused_naming_the_key(override, match):
    with pytest.raises((ValueError, TypeError), match=match):
        load_config(None, ["loss.method=h-scl", override])


@pytest.mark.parametrize("text,value", [("1e2", 100), ("1E4", 10000), ("2.0", 2), ("+3e0", 3), ("7", 7)])
def test_int_fields_take_integral_scientific_notation(tmp_path, text, value):
    assert load_config(None, [f"train.epochs={text}"]).train.epochs == value
    path = tmp_path / "c.yaml"
    path.write_text(f"train:\n  epochs: {text}\n")
    epochs = load_config(path).train.epochs
    assert epochs == value and isinstance(epochs, int)


def test_table2_and_schane_configs_take_scientific_notation(tmp_path):
    from hscl.experiments._schane_config import load_experiment
    from hscl.experiments._table2_config import load_table2_config
    from hscl.experiments.presets import find_preset

    config = load_table2_config(None, ["train.lr=1e-2", "betas=[1e-1, 2E0, 1e1]", "eval.C=[1e-3, 1e3]"])
    assert config.train.lr == 1e-2 and config.betas == [0.1, 2.0, 10.0] and config.eval.C == [1e-3, 1e3]
    with pytest.raises((ValueError, TypeError), match=r"train\.lr must be a number, got 'quick'"):
        load_table2_config(None, ["train.lr=quick"])
    path = tmp_path / "t2.yaml"
    path.write_text("train:\n  lr: 5e-3\n  epochs: 1e1\n")
    config = load_table2_config(path)
    assert config.train.lr == 5e-3 and config.train.epochs == 10

    experiment = load_experiment(find_preset("schane", "quick"), ["pretrain.train.lr=3e-4", "finetune.lr=1E-4"])
    assert experiment.pretrain.train.lr == 3e-4 and experiment.finetune.lr == 1e-4

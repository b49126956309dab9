"""The geometry monitor during training, `hscl diagnose`, the experiments and the HTML report."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from browser import headless_chrome
from helpers import LEARNS, TINY, assert_loss_fell, run_losses
from hscl.cli import main
from hscl.engine.pretrain.monitor import DIAGNOSTIC_FIELDS, diagnostics_hardening, probe_set
from hscl.engine.pretrain.run import load_task, train
from hscl.engine.runtime.config import load_config
from hscl.experiments._collapse_verdict import collapse_verdict, collapse_verdicts
from hscl.experiments.figures import FIG5_ORDERINGS
from hscl.experiments.presets import packaged_configs
from hscl.geometry import diagnose
from hscl.hardening import Exponential, Threshold

DIAG = [*TINY, "diagnostics.probe_size=96"]


def _rows(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("diag") / "run"
    config = load_config(None, [*DIAG, *LEARNS, "loss.method=h-scl", "loss.beta=2.0", "train.epochs=3"])
    train(config, out)
    return out


def test_monitor_writes_every_diagnostic_per_epoch(run):
    rows = _rows(run / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert_loss_fell(run_losses(run))  # the monitor measures a run that learns
    for field in DIAGNOSTIC_FIELDS:
        assert all(r[field] != "" for r in rows), field
    for r in rows:
        assert r["diag_hardening"] == "beta=2"  # the run's own hardening
        assert 0.0 <= float(r["assumption1"]) <= 1.0
        # Proposition 2 and the lower bounds hold on the probe set of every epoch
        assert float(r["alpha_h_ucl"]) == pytest.approx(float(r["alpha_h_scl"]) + float(r["alpha_hcol"]), rel=1e-9)
        assert float(r["loss_h_scl"]) >= float(r["loss_scl"]) and float(r["loss_h_ucl"]) >= float(r["loss_ucl"])
        assert 1.0 <= float(r["effective_rank"]) <= 16.0
    # the monitor's time is reported apart from the training time
    assert all(float(r["diagnostics_seconds"]) > 0 for r in rows)
    spectrum = (run / "spectrum.csv").read_text().splitlines()
    assert spectrum[0].split(",")[:2] == ["epoch", "sv1"] and len(spectrum[0].split(",")) == 17
    assert [line.split(",")[0] for line in spectrum[1:]] == ["1", "2", "3"]
    for name in ("fig4_assumption1.png", "fig5_losses.png", "spectrum.png", "collapse.png"):
        assert (run / "figures" / name).stat().st_size > 5000


def test_last_epoch_row_equals_an_independent_recomputation(run):
    """Recompute the probe embeddings from the final checkpoint and call hscl.geometry directly."""
    task, config = load_task(run / "final.ckpt")
    from hscl.engine.pretrain.run import load_data

    x, labels = probe_set(task, load_data(config), config)
    assert x.shape[0] == 2 * labels.shape[0] == 192
    with torch.no_grad():
        _, z = task.model(x)
    metrics, values = diagnose(z.view(96, 2, -1), labels, Exponential(2.0), temperature=config.loss.temperature)
    last = _rows(run / "metrics.csv")[-1]
    for key in ("assumption1", "loss_ucl", "loss_h_scl", "nc1", "nc2_etf", "effective_rank", "isotropy"):
        assert float(last[key]) == pytest.approx(metrics[key], rel=1e-5, abs=1e-7), key
    sv_last = [float(v) for v in (run / "spectrum.csv").read_text().splitlines()[-1].split(",")[1:]]
    torch.testing.assert_close(torch.tensor(sv_last, dtype=torch.float64), values, rtol=1e-4, atol=1e-9)


def test_diagnostics_hardening_choice():
    base = load_config(None, [*DIAG, "loss.method=scl"])
    assert diagnostics_hardening(base) == Exponential(1.0)
    assert diagnostics_hardening(load_config(None, [*DIAG, "diagnostics.tau=0.5"])) == Threshold(0.5)
    config = load_config(None, [*DIAG, "loss.method=h-scl", "loss.tau=0.7"])
    from hscl.engine.pretrain.task import build_loss

    assert diagnostics_hardening(config, build_loss(config)) == Threshold(0.7)
    with pytest.raises(ValueError, match=r"diagnostics\.probe_size"):
        load_config(None, ["diagnostics.probe_size=1"])
    with pytest.raises(ValueError, match=r"at most one of diagnostics\.beta"):
        load_config(None, ["diagnostics.beta=1", "diagnostics.tau=0.5"])


def test_diagnostics_can_be_switched_off(tmp_path):
    config = load_config(None, [*DIAG, "loss.method=ucl", "train.epochs=1", "diagnostics.enabled=false"])
    train(config, tmp_path / "run")
    row = _rows(tmp_path / "run" / "metrics.csv")[0]
    assert "assumption1" not in row and not (tmp_path / "run" / "spectrum.csv").exists()


def test_diagnose_cli(run, tmp_path, capsys):
    out = tmp_path / "d.json"
    assert main(["diagnose", str(run / "final.ckpt"), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "assumption1" in text and "effective_rank" in text
    result = json.loads(out.read_text())
    last = _rows(run / "metrics.csv")[-1]
    assert result["assumption1"] == pytest.approx(float(last["assumption1"]))
    for key in ("effective_rank", "effective_rank_cov", "isotropy"):
        assert result[key] == pytest.approx(float(last[key]), rel=1e-5), key
    eigenvalues = [float(v) for v in (run / "spectrum.csv").read_text().splitlines()[-1].split(",")[1:]]
    assert result["covariance_eigenvalues"] == pytest.approx(eigenvalues, rel=1e-4, abs=1e-9)
    assert main(["diagnose", str(run / "final.ckpt"), "--tau", "0.9", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["diag_hardening"] == "tau=0.9"
    assert main(["diagnose", str(run / "final.ckpt"), "--beta", "1", "--tau", "0.9"]) == 2
    assert "at most one" in capsys.readouterr().err


def test_collapse_verdict_rules():
    assert collapse_verdict(0.1, 0.02, 8.9, 10) == "neural collapse"
    assert collapse_verdict(0.1, 0.02, 3.0, 10) == "dimensional collapse"
    assert collapse_verdict(5.0, 0.3, 8.5, 10) == "neither"
    assert collapse_verdict(math.nan, 0.3, 8.5, 10) == "diverged"


def _tiny_experiment_configs(tmp_path: Path) -> Path:
    """The experiments' configs shrunk to the digits set, two epochs and two runs each."""
    import yaml

    root = tmp_path / "configs"
    repo = packaged_configs() / "figures"
    for name in ("fig4-fig5", "collapse"):
        folder = root / "figures" / name
        folder.mkdir(parents=True)
        runs = yaml.safe_load((repo / name / "runs.yaml").read_text())
        if name == "fig4-fig5":
            runs = {k: runs[k] for k in ("h-scl-tau-e-0.5", "h-scl-beta-2")}
        (folder / "runs.yaml").write_text(yaml.safe_dump(runs, sort_keys=False))
        base: dict = {}
        for item in [*DIAG, *LEARNS, "data.train_subset=200", "train.epochs=2", "train.knn_k=0"]:
            key, value = item.split("=", 1)
            section, field = key.split(".")
            base.setdefault(section, {})[field] = yaml.safe_load(value)
        if name == "collapse":
            base["model"]["projection_dim"] = 9
        (folder / "base.yaml").write_text(yaml.safe_dump(base))
    return root


def test_experiment_configs_hold_the_papers_settings():
    import yaml

    repo = packaged_configs() / "figures"
    runs = yaml.safe_load((repo / "fig4-fig5" / "runs.yaml").read_text())
    sets = {key: dict(item.split("=") for item in spec["set"]) for key, spec in runs.items()}
    assert float(sets["h-scl-tau-e-0.5"]["loss.tau"]) == pytest.approx(math.exp(-0.5), rel=1e-15)
    assert float(sets["h-scl-tau-e-0.1"]["loss.tau"]) == pytest.approx(math.exp(-0.1), rel=1e-15)
    assert float(sets["h-scl-beta-1"]["loss.beta"]) == 1.0 and float(sets["h-scl-beta-2"]["loss.beta"]) == 2.0
    collapse = yaml.safe_load((repo / "collapse" / "runs.yaml").read_text())
    assert sorted(collapse["methods"]) == ["h-scl", "h-ucl", "scl", "ucl"]
    assert collapse["normalizations"] == ["sphere", "ball", "none"]
    base = load_config(repo / "collapse" / "base.yaml")
    assert base.model.projection_dim == 9  # C - 1 for the 10 Fashion-MNIST classes
    assert load_config(repo / "fig4-fig5" / "base.yaml").loss.method == "h-scl"


def test_reproduce_fig4_fig5_and_collapse_on_tiny_configs(tmp_path, capsys):
    configs = _tiny_experiment_configs(tmp_path)
    out = tmp_path / "fig45"
    assert main(["reproduce", "fig4-fig5", "--configs", str(configs), "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["runs"]) == ["h-scl-tau-e-0.5", "h-scl-beta-2"]
    assert results["runs"]["h-scl-tau-e-0.5"]["hardening"] == "tau=0.606531"
    assert results["runs"]["h-scl-beta-2"]["hardening"] == "beta=2"
    for key, r in results["runs"].items():
        assert len(r["curve"]) == 2 and 0 <= r["assumption1_last"] <= 1
        assert_loss_fell([p["loss"] for p in r["curve"]], what=key)  # each run learned
        assert r["lemma1_ok"] == (r["loss_h_scl"] <= r["loss_h_ucl"])
    for name in ("fig4.png", "fig5.png", "fig4_fig5.csv", "fig4_fig5.md"):
        assert (out / name).stat().st_size > 200
    assert {r["label"]: r["numerics"] for r in results["runs"].values()} == results["numerics"]["cells"]
    assert "Numerics: precision " in (out / "fig4_fig5.md").read_text()  # one precision, stated
    assert FIG5_ORDERINGS in (out / "fig4_fig5.md").read_text()  # which ordering is an identity, which measured
    assert "by construction" in results["orderings"] and "L_H-SCL <= L_H-UCL is measured" in results["orderings"]
    assert "Fig. 4 / Fig. 5 check" in capsys.readouterr().out

    out = tmp_path / "collapse"
    args = ["reproduce", "collapse", "--configs", str(configs), "--out", str(out)]
    assert main([*args, "--methods", "scl,h-ucl", "--normalizations", "ball"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert sorted(results["runs"]) == ["h-ucl-ball", "scl-ball"]
    for key, r in results["runs"].items():
        assert_loss_fell(run_losses(out / key), what=key)
        assert r["projection_dim"] == 9 and len(r["spectrum_last"]) == 9
        assert r["verdict"] == collapse_verdicts(r["last"], r["num_classes"]).verdict
        for convention in ("effective_rank", "effective_rank_cov"):
            assert r["verdict_by_convention"][convention] == collapse_verdict(
                r["last"]["nc1"], r["last"]["nc2_etf"], r["last"][convention], r["num_classes"]
            )
        assert r["last"]["effective_rank_cov"] <= r["last"]["effective_rank"]
        assert r["last"]["mean_norm"] <= 1.0 + 1e-6  # the ball keeps embeddings inside the unit ball
    assert set(results["numerics"]["cells"]) == {"SCL, ball", "H-UCL(beta=1), ball"}
    assert "Numerics: precision " in (out / "collapse.md").read_text()
    md = (out / "collapse.md").read_text()
    assert md.count("|") > 20 and "eff. rank s / (C-1)" in md and "eff. rank s² / (C-1)" in md
    assert results["rule"] in md and "Borderline when the two conventions disagree" in results["rule"]
    # a second call skips the finished runs
    assert main([*args, "--methods", "scl", "--normalizations", "ball"]) == 0
    assert "Neural vs dimensional collapse" in capsys.readouterr().out
    # ... but not runs of another setting: refused in one line naming the run and the key
    assert main([*args, "--methods", "scl", "--normalizations", "ball", "--set", "train.epochs=3"]) == 2
    err = capsys.readouterr().err
    assert f"{out / 'scl-ball'} holds a run of another config (train.epochs: 2 -> 3)" in err and err.count("\n") == 1
    assert main([*args, "--methods", "nope"]) == 2


def test_report_html_renders_in_headless_chromium(run, tmp_path):
    page = tmp_path / "report.html"
    assert main(["report", str(run), "--out", str(page)]) == 0
    pngs = sorted(run.rglob("*.png"))
    browser = headless_chrome(tmp_path / "profile")
    try:
        browser.get(page.as_uri())
        images = browser.execute_script(
            "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight]);"
        )
        text = browser.find_element("tag name", "body").text
    finally:
        browser.quit()
    assert len(images) == len(pngs) >= 4
    for alt, complete, width, height in images:
        assert complete and width > 300 and height > 200, alt  # decoded, not a broken-image icon
    assert "Config" in text and "Per-epoch metrics" in text and "assumption1" in text
    # self-contained: no reference to files next to the page
    html = page.read_text()
    assert 'src="data:image/png;base64,' in html and "file://" not in html

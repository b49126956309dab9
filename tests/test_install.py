"""The installed package, not the checkout: build the wheel, install it into a new virtual environment outside
the checkout and run ``hscl reproduce table1 --preset quick --methods scl`` from an empty folder.

No network: the wheel is built without build isolation (this environment's setuptools), installed with
``--no-deps --no-index``, and the new environment sees this environment's dependencies (torch, Lightning, ...)
through a ``.pth`` file naming their site-packages folder. That folder holds no ``hscl`` (the checkout is an
editable install, whose ``.pth`` hook a plain path line does not run), so what runs is the wheel's copy.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from helpers import assert_above_chance, assert_loss_fell

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
PRESETS = REPO / "src" / "hscl" / "experiments" / "configs"

#: the quick preset, three epochs on a small subset: the whole pipeline (train, kNN, linear probe, table, figure)
QUICK = [
    "train.epochs=3",  # 3 x 5 steps of 64 images, about as many as 1 epoch of 1000: a loss that falls by a factor
    "train.batch_size=64",
    "loss.temperature=0.1",  # helpers.LEARNS
    "data.train_subset=330",
    "data.test_subset=500",
    "train.knn_train=500",
    "train.knn_test=200",
    "eval.linear_epochs=2",
    "eval.linear_lr=0.05",  # 4 steps an epoch at a rate that learns (1e-3 stays at chance)
    "eval.linear_batch_size=128",
    "diagnostics.probe_size=64",
    "train.precision=32",
]


def _run(args: list, **kw) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300, **kw)
    assert result.returncode == 0, f"{args}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _source_copy(dest: Path) -> Path:
    """The files a wheel is built from, copied so that the build writes nothing into the checkout."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md", "DESCRIPTION.md", "LICENSE"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(REPO / "src", dest / "src", ignore=ignore)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    source = _source_copy(tmp / "source")
    dist = tmp / "dist"
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
    _run([*pip_wheel, "-w", dist, source])
    (built,) = dist.glob("hscl-*.whl")
    return built


def test_the_wheel_ships_the_presets(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"hscl/experiments/configs/{p.relative_to(PRESETS).as_posix()}" for p in PRESETS.rglob("*.yaml")}
    assert "hscl/experiments/configs/table1/quick/scl.yaml" in expected
    assert expected <= names, sorted(expected - names)
    assert not any(n.startswith(("tests/", "benchmarks/", "docs/")) for n in names)


def test_the_wheel_ships_the_license_and_a_description_without_relative_links(wheel):
    archive = zipfile.ZipFile(wheel)
    (license_file,) = [n for n in archive.namelist() if n.endswith(".dist-info/licenses/LICENSE")]
    assert archive.read(license_file).decode().startswith("MIT License")
    (metadata,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
    text = archive.read(metadata).decode()
    assert "License-Expression: MIT" in text
    # the index page shows the long description away from the repository: every link must be absolute
    links = re.findall(r"\]\(([^)]+)\)", text)
    assert links and all(link.startswith("https://") for link in links), links


def test_the_installed_wheel_reproduces_table1_quick_from_an_empty_folder(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False, clear=True).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip())
    # the project's dependencies, from this environment (no network)
    (site / "_hscl_test_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel])

    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update({"PATH": f"{env_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}", "OMP_NUM_THREADS": "2"})
    where = _run([python, "-c", "import hscl; print(hscl.__file__)"], cwd=empty, env=env).stdout.strip()
    assert Path(where).is_relative_to(env_dir), f"imported {where}, not the wheel's copy"
    assert not Path(where).is_relative_to(REPO)
    version = _run([env_dir / "bin" / "hscl", "--version"], cwd=empty, env=env).stdout.strip()
    assert version == f"hscl {tomllib.loads((REPO / 'pyproject.toml').read_text())['project']['version']}"

    sets = [arg for item in QUICK for arg in ("--set", item)]
    args = [env_dir / "bin" / "hscl", "reproduce", "table1", "--preset", "quick", "--methods", "scl", *sets]
    _run([*args, "--out", "out"], cwd=empty, env=env)
    results = json.loads((empty / "out" / "results.json").read_text())
    assert list(results["methods"]) == ["scl"]
    row = results["methods"]["scl"]
    assert row["label"] == "SCL" and len(row["runs"]) == 1
    assert_loss_fell([point["loss"] for point in row["runs"][0]["curve"]])  # the installed package trains
    assert_above_chance(row["linear_top1_mean"], 10, what="linear probe")
    assert_above_chance(row["knn_top1_mean"], 10, points=20, what="kNN")  # a bank of the 330 training images
    assert row["config"] == "table1/quick/scl.yaml"  # the packaged preset, named relative to the presets folder
    presets = _run([python, "-c", "from hscl.engine.runtime.paths import PRESETS; print(PRESETS)"], cwd=empty, env=env)
    assert Path(presets.stdout.strip()).is_relative_to(env_dir)  # the wheel's copy of the presets
    assert (Path(presets.stdout.strip()) / row["config"]).is_file()
    assert "| SCL |" in (empty / "out" / "table1.md").read_text()
    assert sorted(p.name for p in empty.iterdir()) == ["out"]  # nothing written outside --out

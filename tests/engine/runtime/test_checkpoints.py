"""Checkpoint and weights files: weights-only loading, and one line + exit code 2 for every bad file.

Every command that reads one (``evaluate``, ``diagnose``, ``finetune``, ``train --resume``) is given a file
that is missing, not a checkpoint (random bytes, text, JSON), truncated, of another model (unrelated tensors,
a state_dict of other shapes, a graph model, another Lightning model) or a malicious pickle, and must print
one line naming the file, exit with 2, show no traceback, and never run the pickle's code.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from helpers import TINY
from hscl.cli import main
from hscl.engine.runtime.checkpoints import CheckpointError, check_weights, load_checkpoint

FAST = [*TINY, "loss.method=scl", "train.epochs=2", "diagnostics.enabled=false", "train.knn_k=0"]


def _sets(items: list[str]) -> list[str]:
    out: list[str] = []
    for item in items:
        out += ["--set", item]
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A real two-epoch run of hscl train (final.ckpt, checkpoints/last.ckpt and previous.ckpt)."""
    root = tmp_path_factory.mktemp("ckpt") / "run"
    assert main(["train", *_sets(FAST), "--out", str(root)]) == 0
    return root


class _Payload:
    """A pickle whose loading would create ``marker`` (what a malicious checkpoint would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _bad_files(folder: Path, run: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, a phrase its one-line error must contain)."""
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, tuple[Path, str]] = {}

    def add(name: str, phrase: str) -> Path:
        path = folder / name
        files[name] = (path, phrase)
        return path

    add("missing.ckpt", "no such file")
    add("random.ckpt", "not a PyTorch checkpoint").write_bytes(bytes(range(7, 250)) * 40)
    add("notes.txt", "not a PyTorch checkpoint (it is a text file)").write_text("epoch 3: loss 4.1\n")
    add("result.json", "not a PyTorch checkpoint (it looks like JSON)").write_text(json.dumps({"top1": 71.2}))
    add("empty.ckpt", "empty").write_bytes(b"")
    whole = (run / "final.ckpt").read_bytes()
    add("truncated.ckpt", "truncated").write_bytes(whole[: len(whole) // 2])
    torch.save({"alpha": torch.randn(3), "beta": torch.zeros(2, 2)}, add("unrelated.pt", "alpha"))
    torch.save(torch.randn(4, 4), add("tensor.pt", "a single tensor of shape (4, 4)"))
    gin = {
        "encoder.convs.0.nn.0.weight": torch.randn(32, 9),
        "encoder.norms.0.weight": torch.ones(32),
        "global_head.block.0.weight": torch.randn(96, 96),
    }
    torch.save(gin, add("gin.pt", "graph model"))
    other = {"state_dict": {"layer.weight": torch.randn(2, 2)}, "hyper_parameters": {"lr": 0.1}, "epoch": 3}
    torch.save(other, add("other-lightning.ckpt", "another model"))
    ckpt = torch.load(run / "final.ckpt", map_location="cpu", weights_only=True)
    key = next(k for k, v in ckpt["state_dict"].items() if v.ndim == 4)
    ckpt["state_dict"][key] = torch.randn(3, 3, 3, 3)
    torch.save(ckpt, add("reshaped.ckpt", "do not fit"))
    return files


def _assert_one_line(capsys, path: Path, phrase: str) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "Traceback" not in captured.err + captured.out
    assert len(err.splitlines()) == 1, err
    assert str(path) in err, err
    assert phrase in err, err
    assert err.startswith("hscl: error: ")
    return err


COMMANDS = {
    "evaluate": lambda path, tmp: ["evaluate", str(path)],
    "diagnose": lambda path, tmp: ["diagnose", str(path)],
    "finetune": lambda path, tmp: ["finetune", str(path), "--out", str(tmp / "ft"), "--no-progress"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_bad_file_is_one_line_and_exit_code_2(command, run, tmp_path, capsys):
    for name, (path, phrase) in _bad_files(tmp_path / "files", run).items():
        if command == "finetune" and name in ("unrelated.pt", "reshaped.ckpt"):
            continue  # a state_dict: finetune reads it (below)
        assert main(COMMANDS[command](path, tmp_path)) == 2, name
        _assert_one_line(capsys, path, phrase)


def test_finetune_names_a_state_dict_that_does_not_fit(run, tmp_path, capsys):
    files = _bad_files(tmp_path / "files", run)
    path = files["unrelated.pt"][0]
    assert main(COMMANDS["finetune"](path, tmp_path)) == 2
    _assert_one_line(capsys, path, "cannot tell the encoder")
    state = {k[len("model.") :]: v for k, v in torch.load(run / "final.ckpt", weights_only=True)["state_dict"].items()}
    state["head.net.3.bias"] = torch.zeros(5)  # the head's output is 16 wide
    path = tmp_path / "model.pt"
    torch.save(state, path)
    assert main(COMMANDS["finetune"](path, tmp_path)) == 2
    _assert_one_line(capsys, path, "do not fit")


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_malicious_pickle_is_refused_and_never_runs(command, tmp_path, capsys):
    marker = tmp_path / "pwned"
    # the payload works: plain unpickling creates the file ...
    pickle.loads(pickle.dumps(_Payload(tmp_path / "proof")))
    assert (tmp_path / "proof").exists()
    # ... in torch's zip format and as a bare pickle stream, hscl refuses it without running it
    zipped, raw, raw2 = tmp_path / "evil.ckpt", tmp_path / "evil.pkl", tmp_path / "evil2.pkl"
    torch.save({"state_dict": _Payload(marker)}, zipped)
    raw.write_bytes(pickle.dumps(_Payload(marker)))
    raw2.write_bytes(pickle.dumps(_Payload(marker), protocol=2))
    for path in (zipped, raw, raw2):
        assert main(COMMANDS[command](path, tmp_path)) == 2
        _assert_one_line(capsys, path, "refused")
        assert not marker.exists()


def test_load_checkpoint_checks_what_it_expects(run):
    ckpt = load_checkpoint(run / "final.ckpt", expect="task")
    assert ckpt["hyper_parameters"]["config"]["loss"]["method"] == "scl"
    assert load_checkpoint(run / "checkpoints" / "last.ckpt", expect="resume")["epoch"] == 1
    assert set(load_checkpoint(run / "final.ckpt", expect="weights")) >= {"state_dict", "hyper_parameters"}
    state = {"encoder.features.0.weight": torch.randn(8, 1, 3, 3)}
    path = run.parent / "state.pt"
    torch.save(state, path)
    assert load_checkpoint(path, expect="weights").keys() == state.keys()
    with pytest.raises(CheckpointError, match=r"a state_dict of 1 tensors .*, not a checkpoint of `hscl train`"):
        load_checkpoint(path, expect="task")
    without_state = {k: v for k, v in ckpt.items() if k not in ("optimizer_states", "loops")}
    torch.save(without_state, path)
    with pytest.raises(CheckpointError, match="not the training state a resume needs"):
        load_checkpoint(path, expect="resume")
    with pytest.raises(FileNotFoundError, match="no such file"):  # what load_task raised before
        load_checkpoint(path.parent / "missing.ckpt")
    with pytest.raises(ValueError, match="expect must be one of"):
        load_checkpoint(path, expect="model")


def test_check_weights_says_what_does_not_fit():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    state = dict(model.state_dict())
    check_weights(model, state, "m.pt")
    state["1.weight"] = torch.zeros(5, 4)
    state.pop("1.bias")
    state["2.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as info:
        check_weights(model, state, "m.pt")
    message = str(info.value)
    assert "1 of another shape (e.g. 1.weight: (5, 4) in the file, (2, 4) in the model)" in message
    assert "1 missing (e.g. 1.bias)" in message and "1 unexpected (e.g. 2.weight)" in message


# --------------------------------------------------------------------------------------------
# --resume


def test_the_previous_checkpoint_is_kept(run):
    last, previous = run / "checkpoints" / "last.ckpt", run / "checkpoints" / "previous.ckpt"
    assert load_checkpoint(previous, expect="resume")["epoch"] == 0  # written at the end of epoch 1
    assert load_checkpoint(last, expect="resume")["epoch"] == 1
    assert os.stat(last).st_ino != os.stat(previous).st_ino  # two files, not one linked twice
    assert not list(run.glob("checkpoints/*.tmp"))


def test_resume_from_a_damaged_last_ckpt_names_the_last_good_one(run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    last, previous = copy / "checkpoints" / "last.ckpt", copy / "checkpoints" / "previous.ckpt"
    whole = last.read_bytes()
    last.write_bytes(whole[: len(whole) // 2])
    resume = ["train", *_sets(FAST), "--out", str(copy), "--resume"]
    assert main(resume) == 2
    err = _assert_one_line(capsys, last, "cannot resume")
    assert "truncated" in err and f"the last good checkpoint is {previous} (end of epoch 1)" in err
    # following the advice resumes from epoch 1 and reaches the uninterrupted run's weights exactly
    shutil.copyfile(previous, last)
    assert main(resume) == 0
    a = torch.load(run / "final.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    b = torch.load(copy / "final.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=key)
    # a deleted last.ckpt does not start the run over while a good checkpoint is kept
    last.unlink()
    assert main(resume) == 2
    err = _assert_one_line(capsys, last, "no such file")
    assert f"the last good checkpoint is {previous} (end of epoch 1)" in err
    # without a good previous checkpoint, it says so
    last.write_bytes(b"not a checkpoint")
    previous.unlink()
    assert main(resume) == 2
    _assert_one_line(capsys, last, "no other checkpoint is kept")


def test_resume_refuses_a_last_ckpt_of_another_model_or_a_malicious_one(run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    last = copy / "checkpoints" / "last.ckpt"
    other = [*FAST, "model.widths=[8, 16, 16, 16]"]
    assert main(["train", *_sets(other), "--out", str(copy), "--resume"]) == 2
    # the recorded config says what differs before any weight is compared
    _assert_one_line(capsys, copy, "trained with another config (model.widths: [8, 16, 16, 32] -> [8, 16, 16, 16])")
    marker = tmp_path / "pwned"
    torch.save({"epoch": 1, "state_dict": _Payload(marker)}, last)
    assert main(["train", *_sets(FAST), "--out", str(copy), "--resume"]) == 2
    _assert_one_line(capsys, last, "refused")
    assert not marker.exists()


def test_finetune_resume_from_a_damaged_state_file(run, tmp_path, capsys):
    out = tmp_path / "ft"
    out.mkdir()
    state = out / "finetune_last.pt"
    state.write_bytes(b"\x00" * 64)
    args = ["finetune", str(run / "final.ckpt"), "--out", str(out), "--resume", "--epochs", "1", "--no-progress"]
    assert main([*args, "--objective", "ce", "--train-subset", "100", "--test-subset", "50"]) == 2
    _assert_one_line(capsys, state, "not a PyTorch checkpoint")

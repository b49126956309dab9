"""``hscl reproduce schane`` (SCHaNe vs CE): the presets end to end at tiny sizes, their outputs, the lam ablation,
resume, and bad settings."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from helpers import assert_above_chance, assert_loss_fell
from hscl.cli import main
from hscl.experiments._schane_config import find_experiment, load_experiment
from hscl.experiments._schane_outputs import ISOTROPY_FORMS


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
        "finetune": {"epochs": 5, "batch_size": 64, "lr": 0.01, "head_lr": 0.1},  # 20 steps that learn the digits
        "full": {"train_subset": 200, "test_subset": 100, "seeds": [0, 1]},
        "fewshot": {"shots": [1, 3], "episodes": 2, "steps": 2, "queries": 4},
        "embedding_points": 60,
    }
    (preset / "tiny.yaml").write_text(json.dumps(experiment))  # JSON is YAML
    out = tmp_path / "out"
    args = ["reproduce", "schane", "--preset", "tiny", "--configs", str(tmp_path / "configs"), "--out", str(out)]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["fewshot"]) == {"1", "3"} and "ablation" not in results
    assert {"diff_vs_ce", "diff_ci95"} <= set(results["full"]["schane"])
    # the CI of full fine-tuning over the two training seeds, from each run's own record: t_{0.975, 1} s / sqrt(2)
    top1 = {o: [json.loads((out / "full" / o / f"seed{s}" / "result.json").read_text())["test_top1"] for s in (0, 1)]
            for o in ("ce", "schane")}  # fmt: skip
    full = results["full"]
    for o, values in top1.items():
        assert full[o]["per_seed"] == values
        assert full[o]["seed_mean_ci95"] == pytest.approx(
            [np.mean(values), 12.706204736 * np.std(values, ddof=1) / 2**0.5]
        )
        assert full[o]["top1_mean"] == pytest.approx(np.mean(values))  # the same 100 test images for every seed
    diffs = np.subtract(top1["schane"], top1["ce"])
    assert full["schane"]["seed_diff_ci95"] == pytest.approx([diffs.mean(), 12.706204736 * diffs.std(ddof=1) / 2**0.5])
    for objective in ("ce", "schane"):  # full fine-tuning learned the 10 classes, with every seed
        for seed, history in enumerate(full[objective]["history"]):
            assert_loss_fell([epoch["ce"] for epoch in history], what=f"{objective} seed {seed} cross-entropy")
        for seed, value in enumerate(top1[objective]):
            assert_above_chance(value, 10, what=f"{objective} seed {seed} top-1")
    for name in ("schane.csv", "schane.md", "fewshot.png", "fewshot.csv", "tsne.png", "tsne.csv"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "tsne.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    emb = results["embedding"]
    assert all(0 < emb["isotropy_features"][o] <= 1 for o in ("ce", "schane"))
    for part in ("features", "projection"):  # both forms; the sign-symmetric one is never above Mu-Viswanath's
        assert all(emb[f"isotropy_{part}_symmetric"][o] <= emb[f"isotropy_{part}"][o] for o in ("ce", "schane"))
    assert emb["isotropy"] == ISOTROPY_FORMS
    text = (out / "schane.md").read_text()
    assert "5-way 3-shot" in text and "isotropy of test projection z" in text and "pre-trained with h-scl" in text
    assert "CI over 2 training seeds)" in text and "CI over 100 test images x 2 seeds)" in text
    assert "from all the images of each class (training and test splits pooled)" in text
    lines = (out / "fewshot" / "3shot.jsonl").read_text().splitlines()
    sets = {frozenset(json.loads(line)["classes"]) for line in lines}
    assert results["fewshot"]["3"]["class_sets"] == len(sets) and f"(2 episodes, {len(sets)} class sets)" in text
    assert "isotropy of test features h (↑), Mu-Viswanath | " in text and "projection z (↑), sym. | " in text
    assert "Isotropy: Mu-Viswanath = Mu and Viswanath: min_c Z(c)" in text
    assert json.loads((out / "precision.json").read_text())["label"] == "float32"
    numerics = results["numerics"]  # the fine-tuning's record, per objective, and the pre-training's own
    assert numerics["cells"]["SCHaNe"]["precision"] == "32-true" and numerics["cells"]["SCHaNe"]["setting"] == "32"
    assert set(numerics["cells"]) == {"CE", "SCHaNe"} and numerics["pinned"]
    assert results["pretrain_numerics"]["setting"] == "32" and results["machine"]["numerics"] == numerics["cells"]["CE"]
    assert "Numerics: precision 32-true (32)" in text
    stamp = (out / "full" / "ce" / "seed0" / "result.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0  # finished parts are reused
    assert (out / "full" / "ce" / "seed0" / "result.json").stat().st_mtime_ns == stamp
    assert "pre-training: cached" in capsys.readouterr().out
    bad = [*args, "--set", "heldout_classes=[4, 5]"]
    assert main(bad) == 2
    assert main([*args, "--set", "finetune.epochs=2"]) == 2  # a stored run of other settings is not reused
    assert "holds a fine-tuning run with other settings" in capsys.readouterr().err


#: the packaged pretrained preset at a tiny size: EfficientNet-Lite0 (ImageNet weights) at 32 px, a few images
TINY_PRETRAINED = [
    "backbone.input_size=32",
    "full.train_subset=40",
    "full.test_subset=40",
    "finetune.epochs=1",
    "finetune.batch_size=20",
    "fewshot.episodes=3",
    "fewshot.steps=1",
    "fewshot.queries=3",
    "embedding_points=40",
]


def test_the_pretrained_preset_end_to_end_with_its_ablation_and_resume(tmp_path, capsys):
    out = tmp_path / "out"
    args = ["reproduce", "schane", "--preset", "pretrained", "--out", str(out)]
    for item in TINY_PRETRAINED:
        args += ["--set", item]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    experiment = results["experiment"]
    assert experiment["backbone"]["name"] == "efficientnet-lite0" and experiment["pretrain"] is None
    assert experiment["finetune"]["lam"] == 0.9 and experiment["finetune"]["beta"] == 1.0
    assert set(results["fewshot"]) == {"1", "5"} and not (out / "pretrain").exists()
    assert results["full"]["classes"] == 10 and results["full"]["train_images"] == 40
    assert results["paper"]["fewshot_gain_up_to"] == 3.32 and results["paper"]["full_gain_up_to"] == 3.41
    assert results["machine"]["threads"] == 1 and results["machine"]["precision"]
    assert {c["setting"] for c in results["numerics"]["cells"].values()} == {"fastest"}  # the preset's, recorded
    assert set(results["stage_seconds"]) == {"pretrain", "precision", "full", "fewshot", "ablation", "embedding"}

    # the ablation: lam = 0 and 0.9 are the CE and SCHaNe cells of the 5-shot episodes, 0.5 and 1 run on them too
    ablation = results["ablation"]
    assert [c["lam"] for c in ablation["lams"]] == [0.0, 0.5, 0.9, 1.0]
    assert [c["source"] for c in ablation["lams"]] == ["ce", "ablation", "schane", "ablation"]
    five = [json.loads(line) for line in (out / "fewshot" / "5shot.jsonl").read_text().splitlines()]
    assert ablation["lams"][0]["accuracy"] == [r["accuracy"]["ce"] for r in five]
    assert ablation["lams"][2]["accuracy"] == [r["accuracy"]["schane"] for r in five]
    assert "diff_vs_lam0" not in ablation["lams"][0] and "diff_vs_lam0" in ablation["lams"][1]
    # at lam = 1 a jointly trained head gets no gradient (it would put every query in the first class, 20%): its
    # head is fitted after fine-tuning instead, and the outputs say so
    assert [c["head"] for c in ablation["lams"]] == ["joint", "joint", "joint", "fitted"]
    assert ablation["lams"][3]["accuracy"] != pytest.approx([100.0 / 5] * 3) and ablation["chance"] == 20.0
    text = (out / "schane.md").read_text()
    assert "lam ablation of SCHaNe" in text and "| 0.5 | ablation run |" in text
    assert "| 1 | ablation run, head fitted after |" in text and "that cell's head is instead fitted" in text
    assert "CI over 3 training seeds)" in text and "all the images of each class" in text
    assert len(results["full"]["ce"]["per_seed"]) == 3
    assert "paper: SCHaNe − CE (BEiT-3 base)" in text and "up to +3.32" in text and "up to +3.41" in text
    assert "efficientnet-lite0 (pre-trained weights, 32 px)" in text
    assert "isotropy of test features h" in text and "projection z" not in text  # SCHaNe on h: z is h
    for name in ("ablation.png", "ablation.csv", "fewshot.png", "tsne.png", "schane.csv"):
        assert (out / name).stat().st_size > 0, name
    header = "lam,source,head,top1_mean,ci95,diff_vs_lam0,diff_ci95,val_top1_mean,val_ci95,selected"
    assert (out / "ablation.csv").read_text().splitlines()[0] == header
    # lam chosen on validation episodes (the held-out classes' training images), reported with its test accuracy
    val_means = {c["lam"]: sum(c["val_accuracy"]) / len(c["val_accuracy"]) for c in ablation["lams"]}
    chosen = max(val_means, key=val_means.get)
    assert ablation["selected_on"] == "validation" and ablation["selection"]["lam"] == chosen
    assert len((out / "ablation-validation" / "5shot.jsonl").read_text().splitlines()) == 3
    assert ablation["selection"]["test_top1_mean"] == pytest.approx(
        np.mean(ablation["lams"][[0.0, 0.5, 0.9, 1.0].index(chosen)]["accuracy"])
    )
    assert "lam chosen on 3 validation episodes" in text and "**selected (validation)**" in text

    # resume: every finished cell is kept; an episode lost by an interruption is the only one run again
    log = out / "ablation" / "5shot.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:10])  # killed while writing the last episode
    stamps = {p: p.stat().st_mtime_ns for p in (out / "full" / "ce" / "seed0" / "result.json", out / "embedding.json")}
    fewshot_log = (out / "fewshot" / "5shot.jsonl").read_text()
    capsys.readouterr()
    assert main(args) == 0
    assert all(p.stat().st_mtime_ns == stamp for p, stamp in stamps.items())
    assert (out / "fewshot" / "5shot.jsonl").read_text() == fewshot_log
    assert [json.loads(line) for line in log.read_text().splitlines()] == [json.loads(line) for line in lines]
    printed = capsys.readouterr().out
    assert "full fine-tuning ce" not in printed and "stored in" in printed  # the precision choice is kept
    again = json.loads((out / "results.json").read_text())
    assert again["ablation"]["lams"] == ablation["lams"] and again["full"]["schane"] == results["full"]["schane"]
    assert [i["seconds"] for i in again["invocations"]] == [results["seconds"], again["seconds"]]
    assert main([*args, "--set", "precision=bf16"]) == 2  # the cells were computed with another precision
    assert "holds a run with precision fastest" in capsys.readouterr().err


def test_lam_zero_is_cross_entropy_exactly():
    """The ablation takes lam = 0 from the CE cells: SCHaNe with lam = 0 gives the very same episodes."""
    from hscl.data.augment import preset_for
    from hscl.data.images import load_dataset
    from hscl.engine.finetune.config import FinetuneConfig
    from hscl.engine.finetune.fewshot import FewShotConfig, few_shot
    from hscl.models import build_backbone

    data = load_dataset("digits")
    backbone = build_backbone("convnet", pretrained=False, in_channels=1, widths=[8, 8, 16, 16])
    configs = {
        "ce": FinetuneConfig(objective="ce", bn="frozen"),
        "lam0": FinetuneConfig(objective="schane", lam=0.0, bn="frozen"),
    }
    fewshot = FewShotConfig(ways=3, shots=[2], queries=3, episodes=3, steps=3)
    rows = few_shot(backbone, data, [0, 1, 2, 3], configs, fewshot, augment=preset_for(1, 8), progress=False)[2]
    assert [r["accuracy"]["lam0"] for r in rows] == [r["accuracy"]["ce"] for r in rows]


def _write_cifar100(directory, per_class=(4, 2)) -> None:
    """Tiny CIFAR-100 python files (every class, random images) in the official layout."""
    from hscl.data.images.fewshot_splits import CIFAR_FS_CLASSES

    fine = sorted(c for names in CIFAR_FS_CLASSES.values() for c in names)  # CIFAR-100's fine labels: A-Z
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True)
    meta = {b"fine_label_names": [n.encode() for n in fine], b"coarse_label_names": [b"c%d" % i for i in range(20)]}
    (directory / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    for file, count in zip(("train", "test"), per_class):
        labels = rng.permutation(np.repeat(np.arange(100), count))
        batch = {
            b"fine_labels": labels.tolist(),
            b"coarse_labels": (labels // 5).tolist(),
            b"data": rng.integers(0, 256, size=(len(labels), 3 * 32 * 32), dtype=np.uint8),
        }
        (directory / file).write_bytes(pickle.dumps(batch, protocol=2))


@pytest.mark.filterwarnings("ignore:Tight layout not applied:UserWarning")  # the t-SNE legend of 100 classes
def test_the_gpu_preset_loads_and_runs_at_a_tiny_size(tmp_path, capsys):
    """cifar-fs-vit: a ViT from hf:PATH, CIFAR-FS episodes, CIFAR-100 full fine-tuning; here a tiny random ViT on
    tiny CIFAR-100 files, on the CPU."""
    experiment = load_experiment(find_experiment("cifar-fs-vit"))
    assert experiment.backbone.name.startswith("hf:") and experiment.backbone.input_size == 224
    assert experiment.data_config.dataset == "cifar-fs" and experiment.full.dataset == "cifar100"
    assert experiment.heldout_classes == list(range(20)) and experiment.fewshot.episodes == 600
    assert experiment.ablation.lams == [0.0, 0.5, 0.9, 1.0] and experiment.precision == "auto"
    assert (experiment.finetune.lam, experiment.finetune.beta, experiment.finetune.embedding) == (0.9, 1.0, "features")

    from transformers import ViTConfig, ViTModel

    config = ViTConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=16, patch_size=8
    )
    torch.manual_seed(0)
    ViTModel(config).save_pretrained(tmp_path / "vit")
    _write_cifar100(tmp_path / "data" / "cifar-100-python")
    out = tmp_path / "out"
    args = ["reproduce", "schane", "--preset", "cifar-fs-vit", "--out", str(out), "--data-dir", str(tmp_path / "data")]
    for item in (
        f"backbone.name=hf:{tmp_path / 'vit'}", "backbone.input_size=16", "device=cpu", "precision=32",
        "full.train_subset=200", "full.test_subset=100", "finetune.epochs=1", "finetune.batch_size=50",
        "fewshot.shots=[1, 2]", "fewshot.queries=2", "fewshot.episodes=2", "fewshot.steps=1", "ablation.shots=2",
        "embedding_points=40",
    ):  # fmt: skip
        args += ["--set", item]
    assert main(args) == 2  # 3 training images per class: too few for validation episodes of 2 + 2, said so
    assert "leaves class 0 " in capsys.readouterr().err
    args += ["--select", "test"]  # the paper's protocol: lam chosen on the test episodes
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"] == "cifar-fs:test" and results["full"]["dataset"] == "cifar100"
    assert results["full"]["classes"] == 100 and set(results["fewshot"]) == {"1", "2"}
    assert [c["source"] for c in results["ablation"]["lams"]] == ["ce", "ablation", "schane", "ablation"]
    assert (
        results["ablation"]["selected_on"] == "test"
        and "lam chosen on the TEST episodes" in (out / "schane.md").read_text()
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["pretrain={}"], "give either backbone"),
        (["pretrain_classes=[0, 1]"], "nothing is pre-trained with a backbone"),
        (["backbone.name=vgg16"], "backbone.name must be one of efficientnet-lite0"),
        (["ablation.lams=[0.5, 1.5]"], r"ablation.lams must lie in \[0.0, 1.0\], got ablation.lams=1.5"),
        (["ablation.lams=[0.5, 0.5]"], "ablation.lams must be distinct"),
        (["precision=fp8"], "precision must be one of '32', 'bf16', 'auto', 'fastest', got 'fp8'"),
        (["full.seeds=[]"], "full.seeds must list at least one seed"),
        (["objectives=[ce, focal]"], "objectives must be one of 'ce', .*, got .focal."),
    ],
)
def test_bad_settings_are_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_experiment(find_experiment("pretrained"), overrides)


def test_the_data_of_an_experiment_that_pretrains_is_its_pretrain_data():
    with pytest.raises(ValueError, match=r"the data of an experiment that pre-trains is pretrain\.data"):
        load_experiment(find_experiment("quick"), ["data.dataset=digits"])
    assert load_experiment(find_experiment("quick")).data_config.dataset == "fashion-mnist"

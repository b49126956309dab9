"""SCHaNe fine-tuning: the objective against float64 loops written from the papers' definitions, lam = 0
is exactly cross-entropy, loading checkpoints and state_dicts, exact resume, episodes, the CLI."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

from helpers import assert_above_chance, assert_loss_fell
from hscl.cli import main
from hscl.data.images import load_dataset
from hscl.engine.finetune.config import FinetuneConfig
from hscl.engine.finetune.fewshot import FewShotConfig, few_shot, mean_ci95, paired_ci95
from hscl.engine.finetune.loop import FineTuneModel, FinetuneObjective, finetune, select_classes, train_step
from hscl.engine.finetune.pretrained import load_pretrained
from hscl.engine.pretrain.run import train
from hscl.engine.runtime.config import load_config
from hscl.engine.runtime.precision import resolve_precision
from hscl.models import build_model


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tiny models run fastest on one thread (and do not fight other processes for cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY = [
    "data.dataset=digits",
    "data.train_subset=300",
    "data.test_subset=100",
    "model.encoder=convnet",
    "model.widths=[8, 16, 16, 32]",
    "model.hidden_dim=32",
    "model.projection_dim=16",
    "train.batch_size=64",
    "train.knn_train=100",
    "train.knn_test=50",
    "train.knn_k=10",
    "train.precision=32",
    "train.channels_last=false",
    "train.progress=false",
]


# --------------------------------------------------------------------------------------------
# float64 loops from the definitions


def loop_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over all B * V rows of -log softmax(logits)[label]."""
    B, V, C = logits.shape
    terms = []
    for i in range(B):
        for v in range(V):
            row = logits[i, v]
            terms.append(-(row[labels[i]] - torch.log(sum(torch.exp(row[c]) for c in range(C)))))
    return sum(terms) / len(terms)


def loop_schane(z: torch.Tensor, labels: torch.Tensor, beta: float, temperature: float) -> torch.Tensor:
    """SCHaNe (arXiv 2308.14893) with the negatives' weights normalised to mean 1 per anchor:

    loss(r, p) = -log(e^{g_rp} / (e^{g_rp} + sum_k w_rk e^{g_rk})),  w_rk = exp(beta g_rk) / mean_k' exp(beta g_rk'),
    averaged over the positives of each anchor, then over the anchors that have positives and negatives.
    """
    B, V, _ = z.shape
    rows = [z[i, v] / torch.sqrt((z[i, v] ** 2).sum()) for v in range(V) for i in range(B)]
    label = [int(labels[i]) for v in range(V) for i in range(B)]
    anchors = []
    for r, zr in enumerate(rows):
        positives = [s for s in range(len(rows)) if s != r and label[s] == label[r]]
        negatives = [s for s in range(len(rows)) if label[s] != label[r]]
        if not positives or not negatives:
            continue
        g = {s: (zr * rows[s]).sum() / temperature for s in range(len(rows))}
        mean_tilt = sum(torch.exp(beta * g[k]) for k in negatives) / len(negatives)
        denominator_negatives = sum(torch.exp(beta * g[k]) / mean_tilt * torch.exp(g[k]) for k in negatives)
        per_positive = [-torch.log(torch.exp(g[p]) / (torch.exp(g[p]) + denominator_negatives)) for p in positives]
        anchors.append(sum(per_positive) / len(per_positive))
    return sum(anchors) / len(anchors)


def loop_supcon(z: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Khosla et al.'s L_out without rescaling: -mean_p log(e^{g_rp} / sum_{s != r} e^{g_rs}), mean over anchors."""
    B, V, _ = z.shape
    rows = [z[i, v] / torch.sqrt((z[i, v] ** 2).sum()) for v in range(V) for i in range(B)]
    label = [int(labels[i]) for v in range(V) for i in range(B)]
    anchors = []
    for r, zr in enumerate(rows):
        others = [s for s in range(len(rows)) if s != r]
        positives = [s for s in others if label[s] == label[r]]
        if not positives:
            continue
        g = {s: (zr * rows[s]).sum() / temperature for s in others}
        log_norm = torch.log(sum(torch.exp(g[s]) for s in others))
        anchors.append(-sum(g[p] - log_norm for p in positives) / len(positives))
    return sum(anchors) / len(anchors)


def _batch(seed: int, B: int = 7, V: int = 2, d: int = 5, C: int = 3, labels=None):
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(B, V, d, generator=generator, dtype=torch.float64)
    logits = torch.randn(B, V, C, generator=generator, dtype=torch.float64)
    if labels is None:
        labels = torch.randint(0, C, (B,), generator=generator)
    return z, logits, torch.as_tensor(labels)


@pytest.mark.parametrize(
    ("lam", "beta", "temperature", "V", "labels"),
    [
        (0.9, 1.0, 0.5, 2, None),
        (0.3, 0.0, 0.2, 2, None),
        (0.5, 4.0, 1.0, 3, None),
        (1.0, 1.0, 0.5, 1, [0, 0, 1, 1, 1, 2, 0]),  # one view: the class-2 sample has no positive
    ],
)
def test_schane_objective_equals_float64_loop(lam, beta, temperature, V, labels):
    z, logits, labels = _batch(lam.__hash__() % 97, V=V, labels=labels)
    objective = FinetuneObjective("schane", lam=lam, beta=beta, temperature=temperature)
    z1, l1 = z.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    loss, parts = objective(l1, z1, labels)
    z2, l2 = z.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    term = loop_schane(z2, labels, beta, temperature)
    expected = (1 - lam) * loop_cross_entropy(l2, labels) + lam * term
    torch.testing.assert_close(parts["contrastive"], term.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    loss.backward()
    expected.backward()
    torch.testing.assert_close(z1.grad, z2.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(l1.grad, l2.grad, rtol=1e-10, atol=1e-12)


def test_hardness_raises_the_schane_term():
    """Tilting towards hard negatives never lowers the term (Chebyshev's sum inequality)."""
    z, logits, labels = _batch(3)
    values = [float(FinetuneObjective("schane", lam=1.0, beta=b)(logits, z, labels)[0]) for b in (0.0, 0.5, 2.0)]
    assert values[0] <= values[1] <= values[2]
    assert values[2] > values[0] + 1e-6


def test_supcon_ce_equals_float64_loop():
    z, logits, labels = _batch(5)
    loss, _ = FinetuneObjective("supcon+ce", lam=0.4, temperature=0.3)(logits, z, labels)
    expected = 0.6 * loop_cross_entropy(logits, labels) + 0.4 * loop_supcon(z, labels, 0.3)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)


def test_lam_zero_is_exactly_cross_entropy():
    z, logits, labels = _batch(7)
    z, logits = z.float(), logits.float()
    reference_logits = logits.clone().requires_grad_(True)
    reference = F.cross_entropy(reference_logits.reshape(-1, 3), labels.repeat_interleave(2))
    reference.backward()
    for objective in ("ce", "schane", "supcon+ce"):
        x, e = logits.clone().requires_grad_(True), z.clone().requires_grad_(True)
        loss, parts = FinetuneObjective(objective, lam=0.0)(x, e, labels)
        loss.backward()
        assert torch.equal(loss, reference) and parts["contrastive"] is None
        assert torch.equal(x.grad, reference_logits.grad)
        assert e.grad is None  # the embedding gets no gradient at all


def test_lam_zero_trains_exactly_like_cross_entropy():
    """One optimiser step of a whole model: SCHaNe with lam = 0 and CE give identical gradients and weights."""
    from hscl.data.augment import Augment, augment_preset

    torch.manual_seed(0)
    base = build_model("convnet", 1, widths=(4, 8, 8, 8), hidden_dim=16, projection_dim=8)
    images = torch.randint(0, 256, (12, 1, 8, 8), dtype=torch.uint8)
    labels = torch.arange(12) % 3
    augment = Augment(augment_preset("grey28").with_overrides(None, size=8))
    states = []
    for objective in ("ce", "schane"):
        model = FineTuneModel(copy.deepcopy(base), 3)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        torch.manual_seed(1)
        train_step(model, FinetuneObjective(objective, lam=0.0), optimizer, augment, images, labels, 2)
        grads = {n: p.grad for n, p in model.named_parameters()}
        states.append((model.state_dict(), grads))
    (state_a, grads_a), (state_b, grads_b) = states
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key
    for key in grads_a:
        assert (grads_a[key] is None) == (grads_b[key] is None), key
        if grads_a[key] is not None:
            assert torch.equal(grads_a[key], grads_b[key]), key
    assert state_a["classifier.weight"].abs().sum() > 0  # the step did something


def test_zero_initialised_head_starts_at_log_classes():
    model = FineTuneModel(build_model("convnet", 1, widths=(4, 8, 8, 8), hidden_dim=16, projection_dim=8), 4)
    logits, h, z = model(torch.randn(5, 1, 8, 8))
    labels = torch.tensor([0, 1, 2, 3, 0])
    loss, _ = FinetuneObjective("ce")(logits[:, None], z[:, None], labels)
    assert float(loss.detach()) == pytest.approx(math.log(4), abs=1e-7)
    assert h.shape == (5, 8) and z.shape == (5, 8)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(5))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"objective": "focal"},
            "objective must be one of 'ce', 'ucl\\+ce', 'h-ucl\\+ce', 'scl\\+ce', 'h-scl\\+ce', 'supcon\\+ce', "
            "'schane'",
        ),
        ({"lam": 1.5}, "lam must lie in"),
        ({"beta": -1.0}, "beta must lie in"),
        ({"temperature": 0.0}, "temperature must lie in"),
        ({"embedding": "logits"}, "embedding must be one of"),
        ({"bn": "off"}, "bn must be one of"),
        ({"views": 0}, "views must be an integer >= 1"),
    ],
)
def test_bad_settings_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FinetuneConfig(**kwargs)


def test_objective_checks_shapes():
    z, logits, labels = _batch(1)
    with pytest.raises(ValueError, match=r"logits must have shape \(B, V, C\)"):
        FinetuneObjective()(logits[:, 0], z, labels)
    with pytest.raises(ValueError, match="labels must have shape"):
        FinetuneObjective()(logits, z, labels[:3])


# --------------------------------------------------------------------------------------------
# statistics


def test_confidence_intervals_closed_form():
    mean, half = mean_ci95([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    assert half == pytest.approx(3.182446305 * math.sqrt(5 / 3) / 2, rel=1e-8)  # t_{0.975, 3} s / sqrt(n)
    assert paired_ci95([3.0, 5.0], [1.0, 2.0])[0] == 2.5
    assert math.isnan(mean_ci95([1.0])[1])
    with pytest.raises(ValueError, match="same length"):
        paired_ci95([1.0], [1.0, 2.0])


# --------------------------------------------------------------------------------------------
# data and episodes


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_select_classes_relabels(digits):
    part = select_classes(digits, [7, 2])
    assert part.classes == ["7", "2"]
    assert set(part.train_labels.tolist()) == {0, 1}
    assert int((part.train_labels == 0).sum()) == int((digits.train_labels == 7).sum())
    assert torch.equal(part.test_images[part.test_labels == 1], digits.test_images[digits.test_labels == 2])
    with pytest.raises(ValueError, match="not classes of"):
        select_classes(digits, [3, 10])


# --------------------------------------------------------------------------------------------
# checkpoints, fine-tuning, resume


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny H-SCL run on digits (one epoch)."""
    out = tmp_path_factory.mktemp("pretrain")
    config = load_config(None, [*TINY, "loss.method=h-scl", "loss.beta=1.0", "train.epochs=1"])
    data = load_dataset("digits").subset(300, 100, seed=0)
    return train(config, out / "run", data=data)


def test_loads_hscl_checkpoints_and_state_dicts(checkpoint, tmp_path):
    pre = load_pretrained(checkpoint)
    assert pre.source == "hscl-checkpoint" and pre.config.loss.method == "h-scl"
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        h, z = pre.model(x)
    # the model's state_dict: architecture read off the shapes, same outputs
    torch.save(pre.model.state_dict(), tmp_path / "model.pt")
    plain = load_pretrained(tmp_path / "model.pt")
    assert plain.source == "state_dict" and plain.head_loaded
    assert plain.architecture["widths"] == [8, 16, 16, 32] and plain.architecture["projection_dim"] == 16
    with torch.no_grad():
        h2, z2 = plain.model(x)
    assert torch.equal(h, h2) and torch.equal(z, z2)
    # the encoder alone: a new projection head
    torch.save(pre.model.encoder.state_dict(), tmp_path / "encoder.pt")
    encoder_only = load_pretrained(tmp_path / "encoder.pt", projection_dim=8)
    assert not encoder_only.head_loaded and encoder_only.model.head.out_dim == 8
    with torch.no_grad():
        assert torch.equal(encoder_only.model.encoder(x), h)
    # wrong architecture, not a model, missing file
    with pytest.raises(ValueError, match="do not fit"):
        load_pretrained(tmp_path / "model.pt", widths=[8, 16, 16, 64])
    torch.save({"epochs": torch.tensor(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="cannot tell the encoder"):
        load_pretrained(tmp_path / "other.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
        load_pretrained(tmp_path / "text.pt")
    with pytest.raises(FileNotFoundError):
        load_pretrained(tmp_path / "missing.pt")


def test_finetune_learns_and_resumes_exactly(checkpoint, digits, tmp_path, monkeypatch):
    import hscl.engine.finetune.loop as ft

    pre = load_pretrained(checkpoint)
    data = digits.subset(500, 200, seed=1)
    config = FinetuneConfig(objective="schane", epochs=3, batch_size=32, lr=1e-2, head_lr=1e-1)
    reference = finetune(pre.model, data, config, out_dir=tmp_path / "a", progress=False)
    assert_above_chance(reference.test_top1, 10)  # the zero head predicts one class: chance
    assert reference.history[0]["ce"] < math.log(10)  # the zero head's loss, then lower within the first epoch
    assert_loss_fell([h["ce"] for h in reference.history], what="the cross-entropy")
    assert [h["epoch"] for h in reference.history] == [1, 2, 3]
    assert all(h["contrastive"] > 0 for h in reference.history)

    saves = []
    original = ft._atomic_save

    def save_then_die(obj, path):
        original(obj, path)
        saves.append(path)
        if len(saves) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(ft, "_atomic_save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        finetune(pre.model, data, config, out_dir=tmp_path / "b", progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        finetune(pre.model, data, config, out_dir=tmp_path / "b", progress=False)
    with pytest.raises(ValueError, match="another fine-tuning config"):
        other = FinetuneConfig(objective="ce", epochs=3, batch_size=32, lr=1e-2)
        finetune(pre.model, data, other, out_dir=tmp_path / "b", resume=True, progress=False)
    resumed = finetune(pre.model, data, config, out_dir=tmp_path / "b", resume=True, progress=False)
    a, b = reference.model.state_dict(), resumed.model.state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [h["test_top1"] for h in resumed.history] == [h["test_top1"] for h in reference.history]
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in reference.history]


def test_few_shot_is_paired_and_resumable(checkpoint, digits, tmp_path, monkeypatch):
    import hscl.engine.finetune.fewshot as fs

    pre = load_pretrained(checkpoint)
    configs = {o: FinetuneConfig(objective=o, bn="frozen") for o in ("ce", "schane")}
    fewshot = FewShotConfig(ways=3, shots=[1, 2], queries=4, episodes=3, steps=2)
    calls = []
    original = fs.run_episode

    def counting(*args, **kwargs):
        calls.append(kwargs["seed"])
        return original(*args, **kwargs)

    monkeypatch.setattr(fs, "run_episode", counting)
    first = few_shot(pre.model, digits, [5, 6, 7, 8], configs, fewshot, out_dir=tmp_path / "fs", progress=False)
    assert len(calls) == 2 * 2 * 3 and calls[0] == calls[1]  # each episode: both objectives, one seed
    assert sorted(first) == [1, 2] and [r["episode"] for r in first[2]] == [0, 1, 2]
    assert all(0 <= r["accuracy"][o] <= 100 for rows in first.values() for r in rows for o in configs)
    with pytest.raises(FileExistsError, match="--resume"):
        few_shot(pre.model, digits, [5, 6, 7, 8], configs, fewshot, out_dir=tmp_path / "fs", progress=False)
    again = few_shot(
        pre.model, digits, [5, 6, 7, 8], configs, fewshot, out_dir=tmp_path / "fs", resume=True, progress=False
    )
    assert again == first and len(calls) == 12  # nothing recomputed
    changed = FewShotConfig(ways=3, shots=[1, 2], queries=4, episodes=3, steps=3)
    with pytest.raises(ValueError, match="another setting"):
        few_shot(pre.model, digits, [5, 6, 7, 8], configs, changed, out_dir=tmp_path / "fs", resume=True)


# --------------------------------------------------------------------------------------------
# command line


def test_finetune_cli(checkpoint, tmp_path, capsys):
    out = tmp_path / "ft"
    args = ["finetune", str(checkpoint), "--objective", "schane", "--epochs", "3", "--batch-size", "64"]
    args += ["--lr", "1e-2", "--head-lr", "0.1"]
    args += ["--train-subset", "300", "--test-subset", "100", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["config"]["lam"] == 0.9
    assert_loss_fell([h["ce"] for h in result["history"]], what="the cross-entropy")
    assert_above_chance(result["test_top1"], 10)
    numerics = result["numerics"]  # the precision of train.precision's rule, auto, on the device it picked
    device = torch.device("cuda" if torch.cuda.device_count() else "cpu")
    expected = resolve_precision("auto", load_pretrained(checkpoint).model, None, device)
    assert (numerics["precision"], numerics["channels_last"], numerics["setting"]) == (*expected, "auto")
    assert numerics["torch"] == torch.__version__
    assert numerics["device"] == ("cuda" if torch.cuda.device_count() else "cpu")
    assert "SCHaNe: test top-1" in capsys.readouterr().out
    # the fine-tuned weights are a state_dict hscl finetune accepts again, here few-shot with CE
    few = ["finetune", str(out / "model.pt"), "--objective", "ce", "--dataset", "digits", "--few-shot"]
    few += ["--ways", "3", "--shots", "1", "--episodes", "2", "--steps", "2", "--out", str(tmp_path / "fs")]
    assert main([*few, "--no-progress"]) == 0
    assert "3-way 1-shot CE" in capsys.readouterr().out
    few_numerics = json.loads((tmp_path / "fs" / "result.json").read_text())["numerics"]
    assert (few_numerics["precision"], few_numerics["channels_last"]) == expected  # the episodes' numerics
    assert main([*args[:4], "--lam", "2", "--out", str(tmp_path / "bad")]) == 2
    assert "lam must lie in [0.0, 1.0]" in capsys.readouterr().err
    assert main(["finetune", str(tmp_path / "missing.ckpt")]) == 2
    capsys.readouterr()
    assert main(["finetune", str(checkpoint), "--objective", "focal", "--out", str(tmp_path / "focal")]) == 2
    assert "objective must be one of 'ce', 'ucl+ce'" in capsys.readouterr().err


@pytest.mark.parametrize("objective", ["ucl+ce", "h-scl+ce", "supcon+ce", "schane"])
def test_objectives_come_from_the_registry(objective):
    """Every registered method fine-tunes as CE + lam * its loss; the value is that sum, built independently."""
    from hscl.engine.finetune.config import OBJECTIVES
    from hscl.engine.finetune.loop import FinetuneObjective
    from hscl.losses import HSCL, UCL, SCHaNe, SupCon

    assert OBJECTIVES == ("ce", "ucl+ce", "h-ucl+ce", "scl+ce", "h-scl+ce", "supcon+ce", "schane")
    torch.manual_seed(0)
    logits, z, labels = torch.randn(6, 2, 3), torch.randn(6, 2, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    loss, parts = FinetuneObjective(objective, lam=0.3, beta=2.0, temperature=0.4)(logits, z, labels)
    ce = torch.nn.functional.cross_entropy(logits.reshape(12, 3), labels.repeat_interleave(2))
    term = {
        "ucl+ce": UCL(temperature=0.4),
        "h-scl+ce": HSCL(beta=2.0, temperature=0.4),
        "supcon+ce": SupCon(temperature=0.4, base_temperature=0.4),
        "schane": SCHaNe(beta=2.0, temperature=0.4),
    }[objective](z, labels)
    torch.testing.assert_close(loss, 0.7 * ce + 0.3 * term)
    torch.testing.assert_close(parts["contrastive"], term)


# --------------------------------------------------------------------------------------------
# pre-trained backbones (hscl.models.build_backbone)


@pytest.fixture(scope="module")
def lite0():
    """EfficientNet-Lite0 with its ImageNet weights at 32 px (a size this CPU fine-tunes in a few seconds)."""
    from hscl.models import build_backbone

    return build_backbone("efficientnet-lite0", input_size=32)


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_backbone_finetune_model_embeddings(lite0):
    from hscl.models import ProjectionHead

    x = torch.rand(4, 1, 8, 8)
    model = FineTuneModel(lite0, 3).eval()  # default for a backbone: the contrastive term on its features
    assert model.embedding == "features" and model.model.encoder is lite0
    with torch.no_grad():
        logits, h, z = model(x)
        torch.testing.assert_close(h, lite0(x))
    assert torch.equal(z, h) and logits.shape == (4, 3) and not logits.any()  # the zero head
    torch.manual_seed(0)
    projected = FineTuneModel(copy.deepcopy(lite0), 3, "projection").eval()
    head = projected.model.head
    assert isinstance(head, ProjectionHead) and (head.in_dim, head.hidden_dim, head.out_dim) == (1280, 512, 128)
    with torch.no_grad():
        _, h2, z2 = projected(x)
        torch.testing.assert_close(z2, F.normalize(head(h2), dim=1))
    torch.testing.assert_close(z2.norm(dim=1), torch.ones(4))
    torch.manual_seed(0)
    again = FineTuneModel(copy.deepcopy(lite0), 3, "projection")
    assert all(torch.equal(a, b) for a, b in zip(again.model.head.parameters(), head.parameters()))


def test_backbone_finetune_runs_and_resumes_exactly(lite0, digits, tmp_path, monkeypatch):
    """EfficientNet-Lite0 fine-tuned on 3 digits classes: the backbone sees [0, 1] images, the run resumes to the
    same weights, and the pre-trained backbone is left untouched."""
    import hscl.engine.finetune.loop as ft

    data = select_classes(digits, [0, 1, 2]).subset(48, 30, seed=0)
    config = FinetuneConfig(objective="schane", epochs=2, batch_size=16, lr=1e-3)
    before = _state(lite0)
    ranges = []
    hook = lite0.register_forward_pre_hook(lambda _, args: ranges.append(args[0].aminmax()))  # copied with it
    try:
        reference = finetune(lite0, data, config, out_dir=tmp_path / "a", progress=False, device="cpu")
    finally:
        hook.remove()
    assert min(float(lo) for lo, _ in ranges) >= 0.0 and max(float(hi) for _, hi in ranges) <= 1.0
    assert max(float(hi) for _, hi in ranges) > 0.5  # images, not their normalised form
    assert all(torch.equal(v, before[k]) for k, v in lite0.state_dict().items())
    assert reference.model.embedding == "features" and len(reference.history) == 2
    assert all(h["contrastive"] > 0 for h in reference.history)
    assert_loss_fell([h["ce"] for h in reference.history], what="the cross-entropy")  # 6 steps: 1.15 to 0.90
    saved = torch.load(tmp_path / "a" / "finetune_last.pt", weights_only=True)
    assert saved["config"]["embedding"] == "features"

    saves = []
    original = ft._atomic_save

    def save_then_die(obj, path):
        original(obj, path)
        saves.append(path)
        if len(saves) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(ft, "_atomic_save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        finetune(lite0, data, config, out_dir=tmp_path / "b", progress=False, device="cpu")
    resumed = finetune(lite0, data, config, out_dir=tmp_path / "b", resume=True, progress=False, device="cpu")
    a, b = reference.model.state_dict(), resumed.model.state_dict()
    assert set(a) == set(b) and any(k.startswith("model.encoder.module.blocks.") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in reference.history]
    assert resumed.test_top1 == reference.test_top1


def test_few_shot_with_a_backbone(lite0, digits, tmp_path):
    """Episodes fine-tune copies of the same backbone weights with the same draws: SCHaNe with lam = 0 (here even
    with a new projection head) scores exactly like CE on every episode, and the backbone is left untouched."""
    from hscl.engine.finetune.fewshot import run_episode

    before = _state(lite0)
    configs = {
        "ce": FinetuneConfig(objective="ce", bn="frozen"),
        "schane-lam0": FinetuneConfig(objective="schane", lam=0.0, embedding="projection", bn="frozen"),
        "schane": FinetuneConfig(objective="schane", bn="frozen"),
    }
    fewshot = FewShotConfig(ways=3, shots=[2], queries=3, episodes=2, steps=2)
    rows = few_shot(lite0, digits, [5, 6, 7, 8], configs, fewshot, out_dir=tmp_path / "fs", progress=False)[2]
    assert [r["episode"] for r in rows] == [0, 1]
    assert all(r["accuracy"]["ce"] == r["accuracy"]["schane-lam0"] for r in rows)
    assert all(torch.equal(v, before[k]) for k, v in lite0.state_dict().items())
    setting = json.loads((tmp_path / "fs" / "setting.json").read_text())
    assert setting["objectives"]["ce"]["embedding"] == "features"  # resolved for the backbone
    assert setting["objectives"]["schane-lam0"]["embedding"] == "projection"
    # one episode run twice from the same seed: the same accuracy (the projection head is drawn from the seed)
    from hscl.data.augment import preset_for

    support, queries = digits.train_images[:6], digits.test_images[:6]
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    args = (lite0, support, labels, queries, labels, FinetuneConfig(objective="schane", embedding="projection"))
    kwargs = {"steps": 2, "augment": preset_for(1, 8), "seed": 7}
    assert run_episode(*args, **kwargs) == run_episode(*args, **kwargs)


def _save_tiny_vit(folder):
    from transformers import ViTConfig, ViTModel

    config = ViTConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=16, patch_size=4
    )
    torch.manual_seed(0)
    ViTModel(config).save_pretrained(folder)
    return folder


def test_finetune_cli_with_a_hf_backbone(tmp_path, capsys):
    folder = _save_tiny_vit(tmp_path / "vit")
    out = tmp_path / "ft"
    args = ["finetune", "--backbone", f"hf:{folder}", "--dataset", "digits", "--classes", "0,1,2", "--epochs", "1"]
    args += ["--batch-size", "16", "--train-subset", "48", "--test-subset", "30", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["backbone"] == f"hf:{folder}" and result["source"] == "backbone" and result["checkpoint"] is None
    assert result["config"]["embedding"] == "features" and result["architecture"]["feature_dim"] == 16
    assert result["architecture"]["input_size"] == 16 and 0 <= result["test_top1"] <= 100
    assert "SCHaNe: test top-1" in capsys.readouterr().out
    few = ["finetune", "--backbone", f"hf:{folder}", "--dataset", "digits", "--few-shot", "--embedding", "projection"]
    few += ["--input-size", "24", "--ways", "3", "--shots", "2", "--queries", "3", "--episodes", "1", "--steps", "2"]
    assert main([*few, "--out", str(tmp_path / "fs"), "--no-progress"]) == 0
    few_result = json.loads((tmp_path / "fs" / "result.json").read_text())
    assert few_result["config"]["embedding"] == "projection" and few_result["architecture"]["input_size"] == 24
    assert "3-way 2-shot SCHaNe" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["finetune"], "pass CHECKPOINT (a checkpoint or state_dict file) or --backbone NAME"),
        (["finetune", "model.pt", "--backbone", "efficientnet-lite0"], "--backbone replaces CHECKPOINT"),
        (["finetune", "--backbone", "efficientnet-lite0", "--encoder", "convnet"], "--backbone replaces CHECKPOINT"),
        (["finetune", "model.pt", "--input-size", "96"], "--input-size applies to --backbone"),
        (["finetune", "--backbone", "vgg16"], "unknown backbone 'vgg16'; valid backbones: efficientnet-lite0"),
        (["finetune", "--backbone", "convnet"], "--random-init"),
        (["finetune", "--backbone", "hf:no/such/folder"], "hf:no/such/folder: no such folder"),
    ],
)
def test_finetune_cli_backbone_errors(args, message, capsys):
    assert main(args) == 2
    assert message in capsys.readouterr().err

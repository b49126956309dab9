"""Every pipeline on every device of the ``device`` fixture: the CPU always, a CUDA GPU where there is one
(``pytest -m gpu``). Tiny sizes: on the CPU these are quick checks that nothing assumes a device; on a GPU
they are the checks that nothing silently runs on (or copies to) the CPU. Also: the CUDA precision decision
with mocked GPU properties, fork safety, the DDP data shard and the device helpers."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest
import torch

from helpers import LEARNS, assert_above_chance, assert_loss_fell, run_losses
from hscl.data.augment import Augment, EvalTransform, augment_preset
from hscl.data.images import load_dataset
from hscl.engine.evaluation.probes import evaluate_task, extract_features, knn_accuracy, linear_probe
from hscl.engine.pretrain import datamodule
from hscl.engine.pretrain import run as train_module
from hscl.engine.pretrain.run import load_task
from hscl.engine.pretrain.task import ContrastiveTask
from hscl.engine.runtime import distributed
from hscl.engine.runtime import precision as precision_module
from hscl.engine.runtime.config import config_to_dict, load_config
from hscl.engine.runtime.distributed import fits_on_device, place, resolve_device, to_device
from hscl.engine.runtime.precision import resolve_deterministic, resolve_precision
from hscl.engine.runtime.torch_flags import restored_torch_flags
from hscl.losses import get_loss
from hscl.models import build_model

TINY = [
    "data.dataset=digits",
    "data.train_subset=200",
    "data.test_subset=100",
    "model.encoder=convnet",
    "model.widths=[8, 8, 16, 16]",
    "model.hidden_dim=32",
    "model.projection_dim=8",
    "train.batch_size=32",
    "train.knn_train=100",
    "train.knn_test=50",
    "train.knn_k=10",
    "train.precision=32",
    "train.progress=false",
    "eval.linear_epochs=2",
    "eval.linear_lr=0.05",  # 7 steps an epoch at a rate that learns the digits in 14 (1e-3 stays at chance)
    "eval.linear_batch_size=32",
    "diagnostics.probe_size=64",
]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and do not fight other processes for cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits").subset(120, 60, seed=0)


def _model(device: torch.device):
    torch.manual_seed(0)
    return build_model("convnet", 1, widths=(8, 8, 16, 16), hidden_dim=32, projection_dim=8).to(device)


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type


# --------------------------------------------------------------------------------------------
# the library: loss, augmentation, model


def test_loss_forward_backward_on_the_device(device):
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(12, 2, 16, generator=generator).to(device).requires_grad_(True)
    labels = torch.randint(0, 3, (12,), generator=generator).to(device)
    with restored_torch_flags():  # float32 matmuls (TF32, which a training run in this process may have turned
        torch.backends.cuda.matmul.allow_tf32 = False  # on, rounds them to ~1e-3): the CPU's tolerance holds
        loss = get_loss("h-scl", beta=1.0)(z, labels)
        loss.backward()
    assert _same_device(loss.device, device) and torch.isfinite(loss)
    assert z.grad is not None and z.grad.device == z.device and torch.isfinite(z.grad).all()
    if device.type != "cpu":  # the same loss as on the CPU
        z_cpu = z.detach().cpu().requires_grad_(True)
        reference = get_loss("h-scl", beta=1.0)(z_cpu, labels.cpu())
        reference.backward()
        torch.testing.assert_close(loss.detach().cpu(), reference.detach(), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(z.grad.cpu(), z_cpu.grad, rtol=1e-3, atol=1e-5)


def test_augmentation_on_a_device_batch(device):
    augment = Augment(augment_preset("colour32")).to(device)
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8).to(device)
    torch.manual_seed(0)
    x = augment(images)
    assert x.shape == (6, 3, 32, 32) and x.dtype == torch.float32 and _same_device(x.device, device)
    assert torch.isfinite(x).all()
    evaluated = EvalTransform(augment_preset("colour32")).to(device)(images)
    assert _same_device(evaluated.device, device)


def test_model_forward_on_the_device(device):
    model = _model(device)
    x = torch.randn(4, 1, 28, 28, device=device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    h, z = model(x)
    assert h.shape == (4, 16) and z.shape == (4, 8)
    assert _same_device(h.device, device) and _same_device(z.device, device)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(4, device=z.device))


# --------------------------------------------------------------------------------------------
# evaluation and diagnostics


def test_knn_and_linear_probe_on_device_features(device):
    generator = torch.Generator().manual_seed(1)
    train_y = torch.randint(0, 3, (90,), generator=generator)
    test_y = torch.randint(0, 3, (30,), generator=generator)
    centres = torch.randn(3, 8, generator=generator) * 3
    train_x = centres[train_y] + torch.randn(90, 8, generator=generator)
    test_x = centres[test_y] + torch.randn(30, 8, generator=generator)
    # features on the device, labels left on the host (as evaluate_task passes them): both must work
    knn = knn_accuracy(train_x.to(device), train_y, test_x.to(device), test_y, k=5)
    probe = linear_probe(train_x.to(device), train_y, test_x.to(device), test_y, epochs=5, batch_size=32)
    reference_knn = knn_accuracy(train_x, train_y, test_x, test_y, k=5)
    assert knn == pytest.approx(reference_knn, abs=100 / 30 + 1e-9)  # a near-tie may flip one query on a GPU
    reference = linear_probe(train_x, train_y, test_x, test_y, epochs=5, batch_size=32)
    if device.type == "cpu":
        assert probe == reference
    else:  # the same head initialisation and batch order: the same result up to float error
        assert probe.top1 == pytest.approx(reference.top1, abs=100 / 30 + 1e-9)
    assert 0 <= probe.top1 <= 100 and probe.top1 > 50


def test_features_stay_on_the_encoder_device(device, digits):
    model = _model(device)
    features = extract_features(model.encoder, digits.test_images, EvalTransform(augment_preset("grey28")).to(device))
    assert features.shape == (60, 16) and _same_device(features.device, device)


def test_geometry_diagnostics_run_in_float64_on_the_cpu(device):
    from hscl.geometry import diagnose, spectrum

    generator = torch.Generator().manual_seed(2)
    z = torch.nn.functional.normalize(torch.randn(16, 2, 8, generator=generator), dim=-1)
    labels = torch.arange(16) % 4
    metrics, values = diagnose(z.to(device), labels.to(device), temperature=0.5)
    assert values.device.type == "cpu" and values.dtype == torch.float64
    reference, reference_values = diagnose(z, labels, temperature=0.5)
    assert metrics.keys() == reference.keys()
    torch.testing.assert_close(values, reference_values)  # the same float64 computation on the same numbers
    assert spectrum(z.to(device)).singular_values.device.type == "cpu"


def test_measure_geometry_and_evaluate_task_with_a_task_on_the_device(device):
    from hscl.engine.pretrain.monitor import diagnostics_hardening, measure_geometry, probe_set
    from hscl.engine.pretrain.run import load_data

    config = load_config(None, [*TINY, "loss.method=h-scl", "loss.beta=1.0"])
    data = load_data(config)
    torch.manual_seed(0)
    task = ContrastiveTask(config_to_dict(config), data.channels, data.size, data.num_classes).to(device).eval()
    x, labels = probe_set(task, data, config)
    assert x.device.type == "cpu" and labels.device.type == "cpu"  # the probe is the same on every device
    metrics, values = measure_geometry(task, x, labels, diagnostics_hardening(config, task.loss_fn))
    assert values.device.type == "cpu" and values.dtype == torch.float64
    assert 0 <= metrics["assumption1"] <= 1 and metrics["feature_effective_rank"] > 0
    result = evaluate_task(task, data, config)
    assert result["linear_top1"] <= 100 and result["knn_top1"] <= 100
    assert_above_chance(result["linear_top1"], 10, what="linear probe")  # the probe learned on the device
    assert_above_chance(result["knn_top1"], 10, what="kNN")


# --------------------------------------------------------------------------------------------
# fine-tuning and few-shot


def test_finetune_step_and_run_on_the_device(device, digits):
    from hscl.engine.finetune.config import FinetuneConfig
    from hscl.engine.finetune.loop import FineTuneModel, FinetuneObjective, finetune, make_optimizer, train_step

    config = FinetuneConfig(objective="schane", epochs=1, batch_size=32, head_lr=1e-2)
    model = FineTuneModel(_model(device), digits.num_classes).to(device)
    objective = FinetuneObjective.from_config(config)
    optimizer = make_optimizer(model, config)
    augment = Augment(augment_preset("grey28")).to(device)
    torch.manual_seed(0)
    # host images and labels: train_step moves them to the model's device
    loss, parts = train_step(
        model, objective, optimizer, augment, digits.train_images[:16], digits.train_labels[:16], 2
    )
    assert torch.isfinite(loss) and _same_device(loss.device, device) and _same_device(parts["ce"].device, device)
    assert all(_same_device(p.device, device) for p in model.parameters())

    # a run that learns from the random initialisation: 3 epochs of 13 steps at a high rate
    pretrained = _model(torch.device("cpu"))
    learns = FinetuneConfig(objective="schane", epochs=3, batch_size=32, lr=1e-2, head_lr=1e-1)
    data = load_dataset("digits").subset(400, 200, seed=0)
    result = finetune(pretrained, data, learns, progress=False, device=device)
    assert result.test_correct.device.type == "cpu"
    assert_loss_fell([h["ce"] for h in result.history], what="the fine-tuning cross-entropy")
    assert_above_chance(result.test_top1, 10, what="fine-tuned top-1")
    assert _same_device(next(result.model.parameters()).device, device)
    assert next(pretrained.parameters()).device.type == "cpu"  # the caller's model is left where it was


def test_few_shot_episode_on_the_device(device, digits):
    from hscl.engine.finetune.config import FinetuneConfig
    from hscl.engine.finetune.fewshot import FewShotConfig, few_shot, run_episode

    # a 2-way episode of digits 0 and 1, 5 shots and 5 queries each, that the random initialisation learns in 20 steps
    config = FinetuneConfig(objective="supcon+ce", bn="frozen", lr=1e-2, head_lr=1e-1)
    support_index = torch.cat([(digits.train_labels == c).nonzero()[:5, 0] for c in (0, 1)])
    query_index = torch.cat([(digits.test_labels == c).nonzero()[:5, 0] for c in (0, 1)])
    support, support_labels = digits.train_images[support_index], digits.train_labels[support_index]
    query, query_labels = digits.test_images[query_index], digits.test_labels[query_index]
    accuracy = run_episode(
        _model(torch.device("cpu")),
        support,
        support_labels,
        query,
        query_labels,
        config,
        steps=20,
        augment=augment_preset("grey28"),
        seed=0,
        device=device,
    )
    assert_above_chance(accuracy, 2, what="2-way query accuracy")  # 80 %: at most 2 of the 10 queries wrong
    fewshot = FewShotConfig(ways=2, shots=[1], queries=2, episodes=1, steps=1)
    rows = few_shot(
        _model(torch.device("cpu")), digits, [0, 1, 2], {"ce": config}, fewshot, progress=False, device=device
    )
    assert len(rows[1]) == 1 and 0 <= rows[1][0]["accuracy"]["ce"] <= 100


def test_graph_pretraining_on_the_device(device):
    pytest.importorskip("torch_geometric")
    from hscl.data.graphs import graphs_from_lists
    from hscl.engine.pretrain.graph_train import GraphObjective, embed_graphs, pretrain_graph_encoder

    generator = torch.Generator().manual_seed(0)
    features, edges, labels = [], [], []
    for g in range(8):
        n = 4 + g % 3
        pairs = [(i, (i + 1) % n) for i in range(n)] if g % 2 == 0 else [(0, i) for i in range(1, n)]
        e = torch.tensor(pairs).T
        edges.append(torch.cat([e, e.flip(0)], 1))
        features.append(torch.nn.functional.one_hot(torch.randint(0, 3, (n,), generator=generator), 3).float())
        labels.append(g % 2)
    data = graphs_from_lists("tiny", features, edges, labels, ["cycle", "star"])
    result = pretrain_graph_encoder(
        data, GraphObjective("h-scl", 1.0), epochs=2, batch_size=4, hidden=8, seed=0, device=device
    )
    assert _same_device(next(result.model.parameters()).device, device) and len(result.losses) == 2
    assert_loss_fell(result.losses, what="the graph objective")
    embeddings = embed_graphs(result.model, data)
    assert embeddings.device.type == "cpu" and embeddings.shape == (8, 24)  # for scikit-learn
    if device.type == "cpu":  # the default ("auto" on a machine without a GPU) is the CPU, same numbers
        again = pretrain_graph_encoder(data, GraphObjective("h-scl", 1.0), epochs=2, batch_size=4, hidden=8, seed=0)
        assert again.losses == result.losses


# --------------------------------------------------------------------------------------------
# a training run


def test_a_training_run_on_the_device_learns(device, tmp_path):
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    overrides = [*TINY, *LEARNS, "loss.method=h-scl", "train.epochs=2", f"train.accelerator={accelerator}"]
    final = train_module.train(load_config(None, overrides), tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["deterministic"] is (device.type == "cpu")  # train.deterministic: auto
    numerics = summary["numerics"]  # the record of what it computed in
    expected = (device.type, "32-true", device.type == "cuda")  # train.precision=32: TF32 on CUDA
    assert (numerics["device"], numerics["precision"], numerics["tf32"]) == expected
    if device.type == "cuda":
        assert numerics["gpu"] == torch.cuda.get_device_name(0) and numerics["gpu_capability"]
    assert_loss_fell(run_losses(tmp_path / "run"))  # it learned in 2 epochs
    task, _ = load_task(final, device=device)
    assert all(_same_device(p.device, device) for p in task.parameters())
    assert task.channels_last is (device.type == "cuda")


# --------------------------------------------------------------------------------------------
# precision on CUDA: decided from the compute capability, without initialising CUDA before a fork


def _no_cuda_init(monkeypatch):
    """Fail the test if anything initialises CUDA (or reads a property that would)."""

    def fail(*args, **kwargs):
        raise AssertionError("CUDA was initialised")

    for name in ("init", "_lazy_init", "get_device_capability", "get_device_properties", "is_bf16_supported"):
        monkeypatch.setattr(torch.cuda, name, fail)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # NVML: no context


@pytest.mark.parametrize(
    ("capability", "expected"),
    [((7, 0), "16-mixed"), ((7, 5), "16-mixed"), ((8, 0), "bf16-mixed"), ((9, 0), "bf16-mixed")],
)
def test_cuda_auto_precision_follows_the_compute_capability(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # T4 / V100 say True: not used
    model = _model(torch.device("cpu"))
    assert resolve_precision("auto", model, None, torch.device("cuda")) == (expected, True)
    assert resolve_precision("32", model, None, torch.device("cuda")) == ("32-true", True)
    assert resolve_precision("16", model, None, torch.device("cuda")) == ("16-mixed", True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert resolve_precision("bf16", model, None, torch.device("cuda")) == ("bf16-mixed", True)
    assert any("native bf16" in str(w.message) for w in caught) is (capability < (8, 0))
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 4))  # no convolution: no channels_last
    assert resolve_precision("auto", mlp, None, torch.device("cuda"))[1] is False


def test_each_process_reads_the_capability_of_its_own_gpu(monkeypatch):
    asked = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: asked.append(device) or (8, 0))
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_precision("auto", None, None, torch.device("cuda"), strategy="ddp", processes=2)[0] == "bf16-mixed"
    monkeypatch.delenv("LOCAL_RANK")
    resolve_precision("auto", None, None, torch.device("cuda"))
    assert asked == [1, 0]


def test_a_forking_strategy_decides_without_initialising_cuda(monkeypatch):
    _no_cuda_init(monkeypatch)
    calls = []

    def fake_run(argv, **kwargs):
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, stdout="8 6\n", stderr="")

    monkeypatch.setattr(precision_module.subprocess, "run", fake_run)
    model = _model(torch.device("cpu"))
    got = resolve_precision("auto", model, None, torch.device("cuda"), strategy="ddp_fork", processes=2)
    assert got == ("bf16-mixed", True)
    assert len(calls) == 1 and calls[0][0] == sys.executable  # read in a child interpreter
    # a child that cannot tell: fp16-mixed, which runs on every CUDA GPU
    monkeypatch.setattr(precision_module.subprocess, "run", lambda *a, **k: (_ for _ in ()).throw(OSError("no")))
    assert resolve_precision("auto", model, None, torch.device("cuda"), strategy="ddp_fork")[0] == "16-mixed"
    # "32" and "16" need no capability at all
    assert resolve_precision("32", model, None, torch.device("cuda"), strategy="ddp_fork")[0] == "32-true"


def test_auto_strategy_forks_only_in_interactive_sessions(monkeypatch):
    assert precision_module._will_fork("ddp_fork", 2) and not precision_module._will_fork("ddp", 2)
    assert not precision_module._will_fork("auto", 2) and not precision_module._will_fork("ddp_spawn", 2)
    monkeypatch.setattr(sys, "ps1", ">>> ", raising=False)
    assert precision_module._will_fork("auto", 2) and not precision_module._will_fork("auto", 1)


def test_cpu_precision_decision_is_unchanged():
    model = _model(torch.device("cpu"))
    sample = torch.randn(4, 1, 28, 28)
    precision, _ = resolve_precision("32", model, sample, torch.device("cpu"))
    assert precision == "32-true"
    with pytest.raises(ValueError, match="CUDA"):
        resolve_precision("16", model, sample, torch.device("cpu"))


def test_deterministic_default_per_device():
    assert resolve_deterministic(None, torch.device("cpu")) is True
    assert resolve_deterministic(None, torch.device("cuda")) is False
    assert resolve_deterministic(True, torch.device("cuda")) is True
    assert resolve_deterministic(False, torch.device("cpu")) is False
    config = load_config(None, ["train.deterministic=false"])
    assert config.train.deterministic is False and load_config(None, []).train.deterministic is None
    with pytest.raises(ValueError, match="accelerator=gpu"):
        load_config(None, ["train.precision=16"])


# --------------------------------------------------------------------------------------------
# data: each DDP rank reads its shard; devices


def test_each_rank_reads_only_its_shard_of_the_global_batch(monkeypatch):
    from hscl.data.views import ViewSampler

    labels = torch.arange(40) % 4
    images = torch.arange(40, dtype=torch.uint8).view(40, 1, 1, 1).expand(40, 1, 2, 2).contiguous()
    sampler = ViewSampler(labels, batch_size=11, pair_mode="same_label", views=2, seed=3)
    whole = list(datamodule._EpochBatches(images, labels, sampler, lambda: 1))
    monkeypatch.setattr(datamodule, "world_size", lambda: 3)
    shards = []
    for k in range(3):
        monkeypatch.setattr(distributed, "rank", lambda k=k: k)
        shards.append(list(datamodule._EpochBatches(images, labels, sampler, lambda: 1)))
    assert len(whole) == 3 and all(len(s) == 3 for s in shards)
    for step, (global_images, global_labels) in enumerate(whole):
        parts = [shards[k][step] for k in range(3)]
        assert [p[0].shape[0] for p in parts] == [4, 4, 3]  # torch.tensor_split sizes
        assert torch.equal(torch.cat([p[0] for p in parts]), global_images)
        assert torch.equal(torch.cat([p[1] for p in parts]), global_labels)


def test_device_helpers(monkeypatch):
    cpu = torch.device("cpu")
    x = torch.zeros(10, dtype=torch.uint8)
    assert place(x, cpu) is x and to_device(x, cpu) is x and not fits_on_device(10, cpu)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1000, 4000))
    assert fits_on_device(300, torch.device("cuda")) and not fits_on_device(301, torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert resolve_device("auto") == cpu and resolve_device(None) == cpu and resolve_device("cpu") == cpu
    with pytest.raises(ValueError, match="no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("tpu-ish")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda") and resolve_device("cuda:1") == torch.device("cuda:1")

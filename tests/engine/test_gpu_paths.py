"""The CUDA paths, checked on the CPU where they can be: TF32 through both of torch's APIs, the flags a training
run changes restored when it returns, fine-tuning and few-shot in the precision of the one rule, no host
synchronisation per step from index copies or step values, device comparison; the ``gpu`` cases check the same
on a GPU."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from hscl.data.augment import Augment, augment_preset
from hscl.data.images import load_dataset
from hscl.engine.finetune import loop as finetune_module
from hscl.engine.finetune.config import FinetuneConfig
from hscl.engine.finetune.loop import FineTuneModel, FinetuneObjective, finetune, make_optimizer
from hscl.engine.pretrain import datamodule as datamodule_module
from hscl.engine.runtime.config import load_config
from hscl.engine.runtime.distributed import same_device
from hscl.engine.runtime.precision import (
    LoopPrecision,
    enable_tf32,
    loop_flags,
    loop_precision_scope,
    resolve_precision,
)
from hscl.engine.runtime.torch_flags import restored_torch_flags, snapshot_torch_flags
from hscl.losses._checks import _nonfinite_allowed
from hscl.models import build_model
from sync_counter import SyncCounter

TINY = [
    "data.dataset=digits",
    "data.train_subset=120",
    "data.test_subset=60",
    "model.encoder=convnet",
    "model.widths=[8, 8, 16, 16]",
    "model.hidden_dim=32",
    "model.projection_dim=8",
    "train.batch_size=40",
    "train.epochs=1",
    "train.knn_train=60",
    "train.knn_test=30",
    "train.knn_k=5",
    "train.progress=false",
]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits").subset(120, 60, seed=0)


def _model():
    torch.manual_seed(0)
    return build_model("convnet", 1, widths=(8, 8, 16, 16), hidden_dim=32, projection_dim=8)


# --------------------------------------------------------------------------------------------
# TF32 and the process-wide flags


def _legacy_reads() -> tuple:
    """What inductor and Lightning read: torch's legacy TF32 getters (they raise after a mixed use of the APIs)."""
    return torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def test_enable_tf32_keeps_both_of_torchs_apis():
    with restored_torch_flags():
        torch.backends.cuda.matmul.allow_tf32 = False
        enable_tf32()
        assert _legacy_reads() == ("high", True, True)
        if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # torch >= 2.9: the new API agrees
            assert torch.backends.cuda.matmul.fp32_precision == "tf32"
        torch.set_float32_matmul_precision("medium")  # the user's TF32 choice stays as it is
        enable_tf32()
        assert _legacy_reads()[0] == "medium"
    assert _legacy_reads()[:2] == ("highest", False)  # restored


def test_flags_restored_after_a_mixed_use_of_the_tf32_apis():
    matmul = torch.backends.cuda.matmul
    if not hasattr(matmul, "fp32_precision"):
        pytest.skip("torch < 2.9 has one TF32 API")
    before = snapshot_torch_flags()
    with restored_torch_flags():
        matmul.fp32_precision = "tf32"  # someone else's new-API setting: the legacy getters now raise
        with pytest.raises(RuntimeError):
            torch.get_float32_matmul_precision()
        with restored_torch_flags():  # a snapshot of the mixed state, put back as it was
            torch.backends.cudnn.benchmark = True
        assert matmul.fp32_precision == "tf32" and not torch.backends.cudnn.benchmark
        matmul.fp32_precision = "ieee"
    assert snapshot_torch_flags() == before


def test_train_restores_the_flags_it_changes(tmp_path, digits, monkeypatch):
    from hscl.engine.pretrain.run import train

    calls = []
    original = torch.use_deterministic_algorithms
    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda *a, **k: (calls.append(a), original(*a, **k)))
    with restored_torch_flags():
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = False
        torch.set_num_threads(2)
        calls.clear()
        before = snapshot_torch_flags()
        config = load_config(None, [*TINY, "loss.method=ucl", "train.threads=1", "train.deterministic=true"])
        train(config, tmp_path / "run", data=digits)
        assert (True,) in calls  # the run did turn deterministic algorithms on (Lightning)
        assert snapshot_torch_flags() == before


# --------------------------------------------------------------------------------------------
# fine-tuning and few-shot in the precision of the one rule


def test_finetune_records_the_precision_of_the_rule(digits):
    config = FinetuneConfig(objective="schane", epochs=1, batch_size=40)
    result = finetune(_model(), digits, config, progress=False, device="cpu")
    precision, channels_last = resolve_precision("auto", _model(), None, torch.device("cpu"))
    assert (result.numerics["precision"], result.numerics["channels_last"]) == (precision, channels_last)
    assert result.numerics["setting"] == "auto"


def test_finetune_in_bf16_autocasts_and_goes_channels_last(digits):
    seen = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="bf16 requested")
        config = FinetuneConfig(objective="supcon+ce", epochs=1, batch_size=40)
        model = FineTuneModel(_model(), digits.num_classes)
        model.classifier.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
        numerics = LoopPrecision("bf16-mixed", True, "bf16")
        model = model.to(memory_format=torch.channels_last)
        augment = Augment(augment_preset("grey28"))
        optimizer = make_optimizer(model, config)
        loss, _ = finetune_module.train_step(
            model, FinetuneObjective.from_config(config), optimizer, augment, digits.train_images[:8],
            digits.train_labels[:8], 2, numerics=numerics,
        )  # fmt: skip
        assert seen == [torch.bfloat16] and torch.isfinite(loss)
        result = finetune(_model(), digits, config, progress=False, device="cpu", precision="bf16")
    assert (result.numerics["precision"], result.numerics["channels_last"]) == ("bf16-mixed", True)
    conv = next(m for m in result.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_fp16_steps_use_a_gradient_scaler(digits):
    numerics = LoopPrecision("16-mixed", False, "16")
    scaler = numerics.grad_scaler("cpu")
    assert scaler is not None and LoopPrecision("bf16-mixed").grad_scaler("cpu") is None
    config = FinetuneConfig(objective="ce", epochs=1, batch_size=8)
    model = FineTuneModel(_model(), digits.num_classes)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = make_optimizer(model, config)
    try:
        loss, _ = finetune_module.train_step(
            model, FinetuneObjective.from_config(config), optimizer, Augment(augment_preset("grey28")),
            digits.train_images[:8], digits.train_labels[:8], 1, numerics=numerics, scaler=scaler,
        )  # fmt: skip
    except RuntimeError as err:  # a CPU build without fp16 kernels for a layer
        pytest.skip(f"fp16 autocast on this CPU: {err}")
    assert torch.isfinite(loss) and scaler.get_scale() > 1.0  # the loss was scaled, the step taken
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_a_scope_hands_its_choice_to_the_loops(digits):
    """hscl reproduce schane: one stored choice for every fine-tuning inside, under its autocast."""
    choice = LoopPrecision("32-true", False, "32")
    with loop_precision_scope(choice, "cpu"):
        result = finetune(_model(), digits, FinetuneConfig(epochs=1, batch_size=40), progress=False, device="cpu")
    assert result.numerics["setting"] == "32" and result.numerics["precision"] == "32-true"


def test_loop_flags_turn_tf32_and_autotuning_on_for_cuda_only():
    with restored_torch_flags():
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.benchmark = False
        before = snapshot_torch_flags()
        with loop_flags("cpu"):
            assert snapshot_torch_flags() == before
        with loop_flags("cuda"):  # setting the switches does not need (or start) CUDA
            assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.benchmark
        assert snapshot_torch_flags() == before


# --------------------------------------------------------------------------------------------
# host synchronisations per step


def _epoch_syncs(monkeypatch, digits, batches: int) -> int:
    config = FinetuneConfig(objective="schane", epochs=1, batch_size=len(digits.train_labels) // batches)
    model = FineTuneModel(_model(), digits.num_classes)
    optimizer = make_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, batches)
    train = (digits.train_images, digits.train_labels)
    objective, augment = FinetuneObjective.from_config(config), Augment(augment_preset("grey28"))
    counter = SyncCounter(monkeypatch, within=str(Path(finetune_module.__file__).parents[2])).install()
    with counter.counting():
        finetune_module._finetune_epoch(
            model, objective, (optimizer, scheduler, None), augment, train, config, 0, LoopPrecision(), False
        )
    monkeypatch.undo()
    return counter.count


def test_a_finetune_epoch_reads_its_step_values_once(monkeypatch, digits):
    """hscl's own reads: the loss's one per step (its table shapes) and the step values once per epoch."""
    few, many = _epoch_syncs(monkeypatch, digits, 3), _epoch_syncs(monkeypatch, digits, 6)
    assert many - few == 3
    assert few == 3 + 1


def test_training_batches_copy_the_epochs_indices_once(monkeypatch, digits):
    from hscl.data.views import ViewSampler

    copies = []
    original = datamodule_module.to_device
    monkeypatch.setattr(datamodule_module, "to_device", lambda x, d: (copies.append(x.shape), original(x, d))[1])
    sampler = ViewSampler(digits.train_labels, batch_size=20, pair_mode="instance", views=2, seed=0)
    batches = list(datamodule_module._EpochBatches(digits.train_images, digits.train_labels, sampler, lambda: 0))
    assert copies == [(6, 20, 2)]  # the whole epoch's indices, once
    expected = sampler.batches(0)
    assert len(batches) == 6
    for (images, labels), index in zip(batches, expected):
        assert torch.equal(images, digits.train_images[index]) and torch.equal(labels, digits.train_labels[index[:, 0]])


# --------------------------------------------------------------------------------------------
# devices, torch versions


def test_same_device_compares_indices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert same_device("cpu", torch.device("cpu", 0)) and not same_device("cpu", "cuda")
    assert same_device("cuda", "cuda:1") and same_device("cuda:1", "cuda")  # the current GPU is 1
    assert not same_device("cuda", "cuda:0") and same_device("cuda:0", "cuda:0")


def test_float16_autocast_is_read_on_torch_before_2_4(monkeypatch):
    """torch 2.1-2.3 have no per-device-type get_autocast_dtype: the older per-device getters answer."""
    from hscl.losses import _checks

    monkeypatch.setattr(_checks, "_PER_DEVICE_AUTOCAST", False)
    z = torch.zeros(2, 2, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the older getters are deprecated in newer torch
        assert not _nonfinite_allowed(z)
        with torch.autocast("cpu", dtype=torch.float16):
            assert _nonfinite_allowed(z)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not _nonfinite_allowed(z)


@pytest.mark.gpu
def test_few_shot_and_finetune_on_cuda_use_the_rule(digits, monkeypatch):
    """On a GPU: bf16 autocast where the GPU computes it (fp16 below), channels-last, TF32 while it runs, a
    model already on ``cuda:0`` not copied for ``device="cuda"``."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    import copy
    import types

    from hscl.engine.finetune import fewshot as fewshot_module

    device = torch.device("cuda")
    precision, channels_last = resolve_precision("auto", _model(), None, device)
    result = finetune(_model(), digits, FinetuneConfig(epochs=1, batch_size=40), progress=False, device="cuda")
    assert (result.numerics["precision"], result.numerics["channels_last"]) == (precision, channels_last)
    assert result.numerics["tf32"] and precision in ("bf16-mixed", "16-mixed")
    copies = []

    def counting(x, memo=None):
        copies.append(type(x).__name__)
        return copy.deepcopy(x, memo)

    monkeypatch.setattr(fewshot_module, "copy", types.SimpleNamespace(deepcopy=counting))  # fewshot's own copies
    fewshot = fewshot_module.FewShotConfig(ways=2, shots=[1], queries=2, episodes=1, steps=1)
    config = FinetuneConfig(objective="ce", bn="frozen")
    on_gpu = _model().to("cuda:0")
    fewshot_module.few_shot(on_gpu, digits, [0, 1, 2], {"ce": config}, fewshot, progress=False, device="cuda")
    assert copies == ["ContrastiveModel"]  # the episode's own copy only, not a second one up front

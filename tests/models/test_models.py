"""Contract tests for hscl.models: encoders, ResNet parameter counts, projection head, output normalisation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hscl.models import (
    ENCODERS,
    NORMALIZATIONS,
    ContrastiveModel,
    OutputNormalization,
    ProjectionHead,
    ResNet,
    build_encoder,
    build_model,
    normalize_output,
    resnet18,
    resnet50,
)

FEATURE_DIMS = {"resnet18": 512, "resnet50": 2048, "convnet": 256}

# torchvision-style ImageNet ResNets: 25,557,032 (ResNet-50) and 11,689,512 (ResNet-18) parameters, each including
# a 1000-way fc layer (2048 * 1000 + 1000 = 2,049,000 and 512 * 1000 + 1000 = 513,000) and a 7x7x3x64 stem conv
# (9,408 parameters); the CIFAR stem's 3x3x3x64 conv has 1,728.
R50_IMAGENET_NO_FC = 25_557_032 - 2_049_000
R18_IMAGENET_NO_FC = 11_689_512 - 513_000
STEM_DIFF = 7 * 7 * 3 * 64 - 3 * 3 * 3 * 64


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def first_conv(m: nn.Module) -> nn.Conv2d:
    return next(c for c in m.modules() if isinstance(c, nn.Conv2d))


def test_registry_names():
    assert set(ENCODERS) == {"resnet18", "resnet50", "convnet"}


@pytest.mark.parametrize("name", sorted(ENCODERS))
@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_encoder_contract(name, channels, size):
    torch.manual_seed(0)
    enc = build_encoder(name, channels)
    assert enc.feature_dim == FEATURE_DIMS[name]
    x = torch.rand(4, channels, size, size)
    h = enc(x)
    assert h.shape == (4, FEATURE_DIMS[name])
    assert h.dtype == torch.float32
    assert torch.isfinite(h).all()
    h.square().mean().backward()
    g = first_conv(enc).weight.grad
    assert first_conv(enc).in_channels == channels
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_imagenet_stem_small_input(name):
    enc = build_encoder(name, 3, stem="imagenet")
    assert isinstance(enc.stem[-1], nn.MaxPool2d)
    assert enc.stem[0].kernel_size == (7, 7) and enc.stem[0].stride == (2, 2)
    assert enc(torch.rand(2, 3, 32, 32)).shape == (2, FEATURE_DIMS[name])


def test_resnet_parameter_counts():
    assert n_params(resnet50(3, stem="imagenet")) == R50_IMAGENET_NO_FC == 23_508_032
    assert n_params(resnet50(3, stem="cifar")) == R50_IMAGENET_NO_FC - STEM_DIFF == 23_500_352
    assert n_params(resnet18(3, stem="imagenet")) == R18_IMAGENET_NO_FC == 11_176_512
    assert n_params(resnet18(3, stem="cifar")) == R18_IMAGENET_NO_FC - STEM_DIFF == 11_168_832
    # one input channel: the stem conv loses 2/3 of its weights
    assert n_params(resnet18(1, stem="cifar")) == 11_168_832 - 2 * 3 * 3 * 64


def test_resnet_init_and_zero_init_residual():
    enc = resnet18(3)
    bns = [m for m in enc.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.equal(b.weight, torch.ones_like(b.weight)) for b in bns)
    assert all(torch.equal(b.bias, torch.zeros_like(b.bias)) for b in bns)
    z = resnet50(3, zero_init_residual=True)
    blocks = [m for m in z.modules() if hasattr(m, "last_bn")]
    assert len(blocks) == 16
    assert all(torch.count_nonzero(b.last_bn.weight) == 0 for b in blocks)
    assert torch.isfinite(z(torch.rand(2, 3, 32, 32))).all()


def test_bad_names_raise():
    with pytest.raises(ValueError, match=r"unknown encoder 'vgg'.*convnet.*resnet18.*resnet50"):
        build_encoder("vgg", 3)
    with pytest.raises(ValueError, match=r"unknown stem.*cifar.*imagenet"):
        resnet18(3, stem="tiny")
    with pytest.raises(ValueError, match=r"unknown normalization mode 'cube'.*sphere.*ball.*none"):
        build_model("convnet", 1, normalization="cube")
    with pytest.raises(ValueError, match="sphere, ball, none"):
        normalize_output(torch.ones(2, 3), "l2")
    with pytest.raises(ValueError, match="valid modes"):
        OutputNormalization("unit")


def test_projection_head_shapes():
    head = ProjectionHead(2048)
    assert (head.in_dim, head.hidden_dim, head.out_dim) == (2048, 512, 128)
    assert isinstance(head.net[1], nn.BatchNorm1d) and isinstance(head.net[2], nn.ReLU)
    assert head(torch.randn(8, 2048)).shape == (8, 128)
    assert ProjectionHead(256, 64, 32)(torch.randn(5, 256)).shape == (5, 32)
    # Linear(2048, 512, no bias: the BN cancels it) + BN(512) + Linear(512, 128)
    assert n_params(head) == 2048 * 512 + 2 * 512 + 512 * 128 + 128


def _rows():
    torch.manual_seed(1)
    z = torch.randn(64, 16)
    z[:32] *= 0.05 / z[:32].norm(dim=1, keepdim=True).max()  # well inside the unit ball
    z[32:] *= 10.0  # outside
    z[0] = 0.0
    return z


def test_normalize_sphere():
    z = _rows()[1:]
    out = normalize_output(z, "sphere")
    torch.testing.assert_close(out.norm(dim=1), torch.ones(63), atol=1e-6, rtol=0)
    torch.testing.assert_close(out, z / z.norm(dim=1, keepdim=True))
    assert torch.isfinite(normalize_output(torch.zeros(2, 4), "sphere")).all()


def test_normalize_ball():
    z = _rows()
    out = normalize_output(z, "ball")
    assert (out.norm(dim=1) <= 1 + 1e-6).all()
    assert torch.equal(out[:32], z[:32])  # rows inside are unchanged, bit for bit
    torch.testing.assert_close(out[32:].norm(dim=1), torch.ones(32), atol=1e-6, rtol=0)
    torch.testing.assert_close(out[32:], normalize_output(z[32:], "sphere"))


def test_normalize_none_and_module():
    z = _rows()
    assert torch.equal(normalize_output(z, "none"), z)
    for mode in NORMALIZATIONS:
        assert torch.equal(OutputNormalization(mode)(z), normalize_output(z, mode))


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_contrastive_model(normalization):
    torch.manual_seed(0)
    model = build_model("convnet", 1, projection_dim=32, hidden_dim=64, normalization=normalization)
    assert isinstance(model, ContrastiveModel)
    assert model.feature_dim == 256 and model.out_dim == 32
    assert model.normalization.mode == normalization
    h, z = model(torch.rand(6, 1, 28, 28))
    assert h.shape == (6, 256) and z.shape == (6, 32)
    norms = z.norm(dim=1)
    if normalization == "sphere":
        torch.testing.assert_close(norms, torch.ones(6), atol=1e-5, rtol=0)
    elif normalization == "ball":
        assert (norms <= 1 + 1e-6).all()
    torch.testing.assert_close(model.encode(torch.zeros(2, 1, 28, 28)).shape, torch.Size([2, 256]))


def test_build_model_defaults_and_encoder_kwargs():
    model = build_model("resnet50", 3, stem="imagenet", zero_init_residual=True)
    assert isinstance(model.encoder, ResNet) and model.encoder.stem_type == "imagenet"
    assert model.feature_dim == 2048
    assert (model.head.in_dim, model.head.hidden_dim, model.head.out_dim) == (2048, 512, 128)
    assert model.normalization.mode == "sphere"


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_bf16_autocast_channels_last(name):
    torch.manual_seed(0)
    channels, size = (1, 28) if name == "convnet" else (3, 32)
    model = build_model(name, channels).to(memory_format=torch.channels_last)
    x = torch.rand(4, channels, size, size).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h, z = model(x)
    assert torch.isfinite(h.float()).all() and torch.isfinite(z.float()).all()
    assert h.shape == (4, FEATURE_DIMS[name]) and z.shape == (4, 128)
    (h.float().square().mean() + z.float().sum()).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert first_conv(model).weight.grad.abs().sum() > 0

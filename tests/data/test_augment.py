"""Tests for hscl.data.augment: shapes, dtypes, normalisation, determinism, flips, grayscale, presets, config."""

from __future__ import annotations

import pytest
import torch

from hscl.data.augment import (
    PRESETS,
    Augment,
    AugmentConfig,
    EvalTransform,
    Normalize,
    augment_preset,
    eval_transform,
    preset_for,
)

# crop keeps the whole image, no colour changes: only flips and normalisation remain
PLAIN = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, noise_std=0.0)


def images(b, c, s, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, c, s, s), dtype=torch.uint8, generator=g)


def bounds(cfg):
    mean, std = torch.tensor(cfg.mean).view(1, -1, 1, 1), torch.tensor(cfg.std).view(1, -1, 1, 1)
    return (0 - mean) / std, (1 - mean) / std


@pytest.mark.parametrize("name", list(PRESETS))
def test_shape_dtype_range(name):
    cfg = augment_preset(name)
    torch.manual_seed(0)
    x = images(8, cfg.channels, cfg.size + 4)
    y = Augment(cfg)(x)
    assert y.shape == (8, cfg.channels, cfg.size, cfg.size) and y.dtype == torch.float32
    lo, hi = bounds(cfg)
    assert torch.isfinite(y).all()
    assert (y >= lo - 1e-5).all() and (y <= hi + 1e-5).all()


def test_uint8_and_float_inputs_agree():
    aug = Augment("colour32")
    x = images(8, 3, 32)
    torch.manual_seed(3)
    a = aug(x)
    torch.manual_seed(3)
    b = aug(x.double() / 255)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_constant_image_normalisation():
    cfg = augment_preset("colour32", PLAIN)
    values = torch.tensor([0.1, 0.5, 0.9]).view(1, 3, 1, 1)
    x = values.expand(4, 3, 32, 32).contiguous()
    expected = ((values - torch.tensor(cfg.mean).view(1, 3, 1, 1)) / torch.tensor(cfg.std).view(1, 3, 1, 1)).expand(
        4, 3, 32, 32
    )
    torch.testing.assert_close(Augment(cfg)(x), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(EvalTransform(cfg)(x), expected, atol=1e-6, rtol=0)
    # a random crop of a constant image stays constant (no border padding leaks in)
    torch.testing.assert_close(Augment(augment_preset("colour32", {"jitter_p": 0.0}))(x), expected, atol=1e-5, rtol=0)
    grey = augment_preset("grey28", {"noise_std": 0.0, "jitter_p": 0.0})
    y = Augment(grey)(torch.full((2, 1, 28, 28), 0.5))
    torch.testing.assert_close(y, torch.full_like(y, (0.5 - 0.2860) / 0.3530), atol=1e-5, rtol=0)


def test_normalization_statistics_override():
    cfg = augment_preset("colour32", {**PLAIN, "mean": [0.2, 0.4, 0.6], "std": [0.5, 0.25, 0.1]})
    assert cfg.mean == (0.2, 0.4, 0.6) and cfg.std == (0.5, 0.25, 0.1)
    y = Augment(cfg)(torch.full((2, 3, 32, 32), 0.6))
    torch.testing.assert_close(y[:, :, 0, 0], torch.tensor([[0.8, 0.8, 0.0]]).expand(2, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(Normalize([0.5], [0.5])(torch.ones(1, 1, 2, 2)), torch.ones(1, 1, 2, 2))


@pytest.mark.parametrize("name", ["grey28", "colour32", "colour64"])
def test_determinism(name):
    cfg = augment_preset(name)
    aug = Augment(cfg)
    x = images(16, cfg.channels, cfg.size)
    torch.manual_seed(123)
    a = aug(x)
    torch.manual_seed(123)
    b = aug(x)
    torch.manual_seed(456)
    c = aug(x)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    # images in one batch get different augmentations
    same = x[:1].expand(16, -1, -1, -1)
    d = aug(same)
    assert not torch.allclose(d[0], d[1])


def test_flip_p1_mirrors():
    cfg = augment_preset("colour32", {**PLAIN, "flip_p": 1.0, "mean": (0, 0, 0), "std": (1, 1, 1)})
    x = images(4, 3, 32).float() / 255
    torch.testing.assert_close(Augment(cfg)(x), x.flip(-1), atol=1e-6, rtol=0)
    cfg0 = cfg.with_overrides(flip_p=0.0)
    torch.testing.assert_close(Augment(cfg0)(x), x, atol=1e-6, rtol=0)
    # a known asymmetric image: a bright left column ends up on the right
    img = torch.zeros(1, 1, 28, 28)
    img[..., 0] = 1.0
    grey = augment_preset("grey28", {**PLAIN, "flip_p": 1.0, "mean": (0.0,), "std": (1.0,)})
    out = Augment(grey)(img)
    assert torch.allclose(out[..., -1], torch.ones(1, 1, 28)) and out[..., :-1].abs().max() < 1e-6


def test_grayscale_p1_equal_channels():
    cfg = augment_preset("colour32", {"grayscale_p": 1.0, "mean": (0.5,) * 3, "std": (0.5,) * 3})
    torch.manual_seed(0)
    y = Augment(cfg)(images(8, 3, 32))
    torch.testing.assert_close(y[:, 0], y[:, 1], atol=1e-5, rtol=0)
    torch.testing.assert_close(y[:, 1], y[:, 2], atol=1e-5, rtol=0)


def test_presets():
    assert set(PRESETS) == {"grey28", "colour32", "colour64", "colour96"}
    g = augment_preset("grey28")
    assert (g.size, g.channels, g.crop_scale, g.grayscale_p, g.blur_p) == (28, 1, (0.5, 1.0), 0.0, 0.0)
    assert g.jitter[2:] == (0.0, 0.0) and g.noise_std > 0
    assert g.mean == (0.2860,) and g.std == (0.3530,)
    c = augment_preset("colour32")
    assert (c.size, c.channels, c.crop_scale, c.flip_p) == (32, 3, (0.2, 1.0), 0.5)
    assert (c.jitter, c.jitter_p, c.grayscale_p, c.blur_p) == ((0.4, 0.4, 0.4, 0.1), 0.8, 0.2, 0.0)
    assert c.mean == (0.4914, 0.4822, 0.4465) and c.std == (0.2470, 0.2435, 0.2616)
    for name, size in (("colour64", 64), ("colour96", 96)):
        p = augment_preset(name)
        assert p.size == size and p.blur_p == 0.5 and p.grayscale_p == 0.2 and p.blur_kernel_size % 2 == 1
    assert preset_for(1, 28) == g
    assert preset_for(3, 32) == c
    assert preset_for(3, 64) == augment_preset("colour64")
    assert preset_for(3, 96) == augment_preset("colour96")
    assert preset_for(3, 48, {"blur_p": 0.0}).size == 48
    with pytest.raises(ValueError, match=r"unknown augmentation preset 'mnist'.*grey28.*colour96"):
        augment_preset("mnist")
    with pytest.raises(ValueError, match="channels"):
        preset_for(4, 32)


def test_config_overrides():
    base = augment_preset("colour32")
    cfg = base.with_overrides({"crop_scale": [0.5, 1.0], "flip_p": 0.0})
    assert cfg.crop_scale == (0.5, 1.0) and cfg.flip_p == 0.0 and base.flip_p == 0.5
    with pytest.raises(ValueError, match=r"unknown augmentation option 'flip'.*valid options:.*flip_p.*noise_std"):
        base.with_overrides({"flip": 0.5})
    with pytest.raises(ValueError, match="unknown augmentation option 'colour'"):
        augment_preset("grey28", {"colour": True})
    with pytest.raises(ValueError, match="flip_p"):
        base.with_overrides(flip_p=1.5)
    with pytest.raises(ValueError, match="mean must have 3 values"):
        base.with_overrides(mean=(0.5,))
    with pytest.raises(ValueError, match="crop_scale"):
        AugmentConfig(size=32, channels=3, crop_scale=(0.0, 1.0))


def test_bad_input():
    aug = Augment("colour32")
    with pytest.raises(ValueError, match="channel"):
        aug(images(2, 1, 32))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        aug(torch.rand(3, 32, 32))
    with pytest.raises(TypeError, match="uint8 or floating"):
        aug(torch.zeros(2, 3, 32, 32, dtype=torch.int64))


def test_grey_jitter_ignores_saturation_and_hue():
    cfg = AugmentConfig(size=28, channels=1, jitter_p=1.0)  # default jitter has saturation and hue
    y = Augment(cfg)(images(4, 1, 28))
    assert y.shape == (4, 1, 28, 28) and torch.isfinite(y).all()


def test_eval_transform():
    cfg = augment_preset("colour32")
    ev = eval_transform(cfg)
    x = images(4, 3, 32)
    expected = (x.float() / 255 - torch.tensor(cfg.mean).view(1, 3, 1, 1)) / torch.tensor(cfg.std).view(1, 3, 1, 1)
    torch.testing.assert_close(ev(x), expected)
    torch.manual_seed(0)
    a = ev(x)
    torch.manual_seed(1)
    assert torch.equal(a, ev(x))
    assert ev(images(4, 3, 64)).shape == (4, 3, 32, 32)
    assert ev(images(4, 3, 24)).shape == (4, 3, 32, 32)


def test_views_and_autocast():
    aug = Augment("colour32")
    x = images(8, 3, 32)
    v1, v2 = aug.views(x)
    assert v1.shape == v2.shape == (8, 3, 32, 32) and not torch.allclose(v1, v2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = aug(x)
    assert y.dtype == torch.float32

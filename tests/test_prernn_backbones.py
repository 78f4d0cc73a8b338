"""Backbone registry, stage layout and shapes (tiny inputs; vgg16/resnet18 on the meta device)."""
import json

import pytest
import torch

import prernn


def test_registry_lists_all_backbones():
    assert prernn.list_backbones() == sorted(["vgg16", "vgg_mini", "resnet18", "resnet_mini", "c3d_mini"])
    with pytest.raises(ValueError, match="vgg_mini"):
        prernn.create_backbone("alexnet", 3)


def test_backbone_options_are_the_builders_keyword_options():
    assert prernn.backbone_options("vgg_mini") == {"input_size", "width", "dropout"}
    assert prernn.backbone_options("c3d_mini") == {"snippet", "width", "dropout"}
    assert prernn.backbone_options("resnet_mini") == set()
    with pytest.raises(ValueError, match="unknown backbone 'alexnet'"):
        prernn.backbone_options("alexnet")


def test_register_backbone_rejects_duplicate_names():
    def vgg16(num_classes, in_channels=3):
        return None

    with pytest.raises(ValueError, match="already registered"):
        prernn.register_backbone(vgg16)
    assert prernn.create_backbone("vgg_mini", 2).config["name"] == "vgg_mini"


@pytest.mark.parametrize("name,shape", [("vgg_mini", (2, 3, 16, 16)), ("resnet_mini", (2, 3, 16, 16)),
                                        ("c3d_mini", (2, 3, 4, 16, 16))])
def test_mini_backbones_forward_finite(name, shape):
    torch.manual_seed(0)
    bb = prernn.create_backbone(name, 5).eval()
    out = bb(torch.randn(*shape))
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    assert bb.is_3d == (name == "c3d_mini")
    cfg = json.loads(json.dumps(bb.config))
    assert cfg["name"] == name and cfg["num_classes"] == 5 and cfg["in_channels"] == 3


def test_vgg16_real_layout_on_meta():
    with torch.device("meta"):
        bb = prernn.create_backbone("vgg16", 1000)
        x = torch.empty(1, 3, 224, 224)
        shapes = {}
        for name in bb.stages:
            x = bb.stages[name](x)
            shapes[name] = tuple(x.shape)
    assert list(bb.stages) == ["conv1", "conv1_2", "conv2", "conv2_2", "conv3", "conv3_3", "conv4", "conv4_3",
                               "conv5", "conv5_3", "fc6", "fc7", "classifier"]
    assert shapes["conv5"] == (1, 512, 14, 14) and shapes["conv5_3"] == (1, 512, 7, 7)
    assert [type(m).__name__ for m in bb.stages["conv3"]] == ["Conv2d", "ReLU"] * 2  # conv3_1, conv3_2
    assert [type(m).__name__ for m in bb.stages["conv5_3"]] == ["Conv2d", "ReLU", "MaxPool2d", "AdaptiveAvgPool2d"]
    assert tuple(bb.stages["fc6"].linear.weight.shape) == (4096, 25088)
    assert tuple(bb.stages["fc7"].linear.weight.shape) == (4096, 4096)
    assert shapes["classifier"] == (1, 1000)
    n = sum(p.numel() for p in bb.parameters())
    assert n == 138357544  # torchvision vgg16 parameter count
    assert prernn.candidate_layers(bb) == ["conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3", "fc6", "fc7"]
    assert prernn.default_candidates(bb) == ["fc6", "fc7"] and prernn.trunk_boundary(bb) == "fc6"


def test_resnet18_real_layout_on_meta():
    with torch.device("meta"):
        bb = prernn.create_backbone("resnet18", 1000)
        x = torch.empty(1, 3, 224, 224)
        shapes = {}
        for name in bb.stages:
            x = bb.stages[name](x)
            shapes[name] = tuple(x.shape)
    assert list(bb.stages) == ["stem", "layer1", "layer1_1", "layer2", "layer2_1", "layer3", "layer3_1", "layer4",
                               "layer4_1", "pool", "classifier"]
    assert shapes["layer1_1"] == (1, 64, 56, 56) and shapes["layer3_1"] == (1, 256, 14, 14)
    assert shapes["layer4_1"] == (1, 512, 7, 7) and shapes["pool"] == (1, 512) and shapes["classifier"] == (1, 1000)
    assert sum(p.numel() for p in bb.parameters()) == 11689512  # torchvision resnet18 parameter count
    assert prernn.candidate_layers(bb) == ["layer1_1", "layer2_1", "layer3_1", "layer4_1"]
    assert prernn.default_candidates(bb) == ["layer4_1"] and bb.absorbs == {"layer4_1": "pool"}


@pytest.mark.parametrize("name,candidates,defaults", [
    ("vgg_mini", ["conv1", "conv2", "conv3", "fc6", "fc7"], ["fc6", "fc7"]),
    ("resnet_mini", ["layer1", "layer2", "layer3_1"], ["layer3_1"]),
    ("c3d_mini", ["conv3", "fc6", "fc7"], ["fc6", "fc7"]),
])
def test_mini_candidates_and_defaults(name, candidates, defaults):
    """Conv candidates are offered by every backbone; the defaults (what a search combines unless told
    otherwise) are the candidates of before: fc6 / fc7, or the ResNet's last block."""
    bb = prernn.create_backbone(name, 3)
    assert prernn.candidate_layers(bb) == candidates and prernn.default_candidates(bb) == defaults
    assert prernn.trunk_boundary(bb) == defaults[0]
    for layer in candidates:  # a conversion's trunk ends below every converted layer, never above the default one
        names = list(bb.stages)
        want = min(layer, defaults[0], key=names.index)
        assert prernn.trunk_boundary(bb, [layer]) == want
        assert prernn.trunk_boundary(prernn.convert(bb, [layer], "gru")) == want


def test_forward_stages_start_stop():
    torch.manual_seed(0)
    bb = prernn.create_backbone("vgg_mini", 4, input_size=16).eval()
    x = torch.randn(2, 3, 16, 16)
    feats = bb.forward_stages(x, stop="fc6")
    assert feats.shape == (2, 64, 2, 2)
    assert torch.allclose(bb.forward_stages(feats, start="fc6"), bb(x))
    with pytest.raises(ValueError, match="fc6"):
        bb.forward_stages(x, start="fc9")


def test_vgg_mini_input_size_validated():
    with pytest.raises(ValueError, match="input_size"):
        prernn.create_backbone("vgg_mini", 3, input_size=8)
    bb = prernn.create_backbone("vgg_mini", 3, input_size=112)
    assert bb(torch.randn(1, 3, 112, 112)).shape == (1, 3)

"""load_pretrained: our own files, torchvision-named VGG16 / ResNet-18 state_dicts, clear rejections."""
import pytest
import torch

import prernn
from prernn.pretrained import _translate

VGG16_CONV_IDX = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]  # torchvision vgg16 features.N convs


def torchvision_vgg16_keys():
    keys = [f"features.{i}.{p}" for i in VGG16_CONV_IDX for p in ("weight", "bias")]
    return keys + [f"classifier.{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias")]


def torchvision_resnet18_keys():
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = ["conv1.weight"] + [f"bn1.{p}" for p in bn]
    for l in range(1, 5):
        for b in range(2):
            pre = f"layer{l}.{b}."
            keys += [pre + "conv1.weight"] + [pre + f"bn1.{p}" for p in bn]
            keys += [pre + "conv2.weight"] + [pre + f"bn2.{p}" for p in bn]
            if l > 1 and b == 0:
                keys += [pre + "downsample.0.weight"] + [pre + f"downsample.1.{p}" for p in bn]
    return keys + ["fc.weight", "fc.bias"]


def test_round_trip_own_state_dict_and_checkpoint(tmp_path):
    torch.manual_seed(0)
    a = prernn.create_backbone("vgg_mini", 5).eval()
    torch.save(a.state_dict(), tmp_path / "a.pt")
    torch.save({"config": a.config, "state_dict": a.state_dict(), "meta": {}}, tmp_path / "ck.pt")
    x = torch.randn(2, 3, 32, 32)
    for f in ("a.pt", "ck.pt"):
        b = prernn.create_backbone("vgg_mini", 5).eval()
        assert not torch.allclose(b(x), a(x))
        prernn.load_pretrained(b, tmp_path / f)
        assert torch.equal(b(x), a(x))


def test_vgg16_torchvision_names_map_to_all_our_keys():
    with torch.device("meta"):
        bb = prernn.create_backbone("vgg16", 1000)
    sd = {k: torch.empty(0, device="meta") for k in torchvision_vgg16_keys()}
    assert set(_translate(bb, sd)) == set(bb.state_dict())
    assert "stages.conv5_3.0.weight" in _translate(bb, sd)  # features.28 -> conv5_3, the last conv of block 5
    assert "stages.conv5.2.weight" in _translate(bb, sd)  # features.26 -> conv5_2


def _to_torchvision_resnet(sd):
    out = {}
    for k, v in sd.items():
        k = k.replace("stages.stem.", "")
        for i in range(1, 5):
            k = k.replace(f"stages.layer{i}_1.", f"layer{i}.1.")
        k = k.replace("stages.classifier.linear.", "fc.").replace("stages.", "")
        out[k] = v
    return out


def test_loads_torchvision_named_resnet18(tmp_path):
    torch.manual_seed(1)
    a = prernn.create_backbone("resnet18", 1000).eval()
    with torch.no_grad():
        for n, b in a.named_buffers():
            if n.endswith("running_mean"):
                b.normal_(0, 0.1)
    tv = _to_torchvision_resnet(a.state_dict())
    assert set(tv) == set(torchvision_resnet18_keys())
    torch.save(tv, tmp_path / "resnet18.pth")
    b = prernn.create_backbone("resnet18", 1000).eval()
    prernn.load_pretrained(b, tmp_path / "resnet18.pth")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    # other number of classes: the classifier is skipped only when asked
    c = prernn.create_backbone("resnet18", 7)
    with pytest.raises(ValueError, match="stages.classifier.linear.weight"):
        prernn.load_pretrained(c, tmp_path / "resnet18.pth")
    prernn.load_pretrained(c, tmp_path / "resnet18.pth", strict_classifier=False)
    assert torch.equal(c.stages["layer4_1"].conv2.weight, a.stages["layer4_1"].conv2.weight)
    assert c.stages["classifier"].linear.weight.shape == (7, 512)


def test_loads_torchvision_named_vgg_mini(tmp_path):
    torch.manual_seed(2)
    a = prernn.create_backbone("vgg_mini", 4).eval()
    # vgg_bn layout: block b = [conv, bn, relu, pool] -> features 0..3, 4..7, 8..11
    ren = {"stages.conv1.": "features.", "stages.fc6.linear.": "classifier.0.",
           "stages.fc7.linear.": "classifier.3.", "stages.classifier.linear.": "classifier.6."}
    tv = {}
    for k, v in a.state_dict().items():
        for ours, theirs in ren.items():
            if k.startswith(ours):
                k = theirs + k[len(ours):]
        for blk, off in (("stages.conv2.", 4), ("stages.conv3.", 8)):
            if k.startswith(blk):
                j, rest = k[len(blk):].split(".", 1)
                k = f"features.{int(j) + off}.{rest}"
        tv[k] = v
    assert "features.9.running_var" in tv
    torch.save(tv, tmp_path / "v.pth")
    b = prernn.load_pretrained(prernn.create_backbone("vgg_mini", 4).eval(), tmp_path / "v.pth")
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(a(x), b(x))


def test_rejects_mismatched_state_dict_with_clear_message(tmp_path):
    a = prernn.create_backbone("vgg_mini", 4)
    sd = a.state_dict()
    sd["stages.fc6.linear.weight"] = torch.zeros(3, 3)
    sd.pop("stages.fc7.linear.bias")
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(ValueError) as e:
        prernn.load_pretrained(prernn.create_backbone("vgg_mini", 4), tmp_path / "bad.pt")
    msg = str(e.value)
    assert "stages.fc7.linear.bias" in msg and "extra.weight" in msg and "(3, 3)" in msg
    with pytest.raises(ValueError, match="does not exist"):
        prernn.load_pretrained(a, tmp_path / "missing.pt")


def test_refuses_pickled_code(tmp_path):
    torch.save({"state_dict": a_function}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="weights_only"):
        prernn.load_pretrained(prernn.create_backbone("vgg_mini", 4), tmp_path / "evil.pt")


def a_function():
    return 1


def test_first_conv_adapted_to_other_in_channels(tmp_path):
    torch.manual_seed(3)
    rgb = prernn.create_backbone("resnet_mini", 4)
    torch.save(rgb.state_dict(), tmp_path / "rgb.pt")
    depth = prernn.create_backbone("resnet_mini", 4, in_channels=1)
    with pytest.raises(ValueError, match="stages.stem.conv1.weight"):
        prernn.load_pretrained(depth, tmp_path / "rgb.pt", adapt_in_channels=False)
    prernn.load_pretrained(depth, tmp_path / "rgb.pt")
    w = rgb.stages["stem"].conv1.weight
    assert torch.allclose(depth.stages["stem"].conv1.weight, w.sum(1, keepdim=True))
    # a constant input gives the same first-conv response as the RGB net on a constant RGB image
    x = torch.ones(1, 1, 8, 8)
    assert torch.allclose(depth.stages["stem"].conv1(x), rgb.stages["stem"].conv1(x.repeat(1, 3, 1, 1)), atol=1e-5)

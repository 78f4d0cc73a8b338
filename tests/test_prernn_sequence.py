"""convert / traditional / SequenceModel / build_from_config / count_recurrent_parameters."""
import json
import re

import pytest
import torch

import prernn

MINI = {"vgg_mini": ((3, 16, 16), {"input_size": 16}), "resnet_mini": ((3, 16, 16), {}),
        "c3d_mini": ((3, 4, 16, 16), {})}
VARIANTS = [("vrnn", False), ("lstm", False), ("lstm", True), ("gru", False), ("gru", True)]


def _clip(name, B=2, T=3):
    return torch.randn(B, T, *MINI[name][0])


def _layer_sets(bb):
    """Each default candidate alone, and every candidate (conv and fc) at once; each candidate alone:
    test_every_candidate_converts_steps_counts_and_round_trips."""
    return [[x] for x in bb.default_candidates] + [bb.candidates]


def _models(bb):
    for cell, sih in VARIANTS:
        for layers in _layer_sets(bb):
            yield f"{cell}-{sih}-{'+'.join(layers)}", prernn.convert(bb, layers, cell, sih)
    for cell, _ in VARIANTS[::2]:
        yield f"trad-{cell}", prernn.traditional(bb, cell, 2)


@pytest.mark.parametrize("name", ["vgg_mini", "resnet_mini", "c3d_mini", "vgg16", "resnet18"])
def test_every_backbone_cell_variant_shapes(name):
    torch.manual_seed(0)
    if name in MINI:
        bb = prernn.create_backbone(name, 4, **MINI[name][1]).eval()
        for tag, m in _models(bb):
            m.eval()
            clips = _clip(name)
            with torch.no_grad():
                out = m(clips)
                outs, state = [], None
                for t in range(clips.shape[1]):
                    o, state = m.step(clips[:, t], state)
                    outs.append(o)
            assert out.shape == (2, 3, 4), tag
            assert torch.isfinite(out).all(), tag
            assert torch.allclose(torch.stack(outs, 1), out, atol=1e-5), tag  # step over a clip == forward
    else:  # the real layouts: shapes only, on the meta device (no 500 MB allocation)
        with torch.device("meta"):
            bb = prernn.create_backbone(name, 10)
            for tag, m in _models(bb):
                out = m(torch.empty(1, 2, 3, 224, 224))
                assert tuple(out.shape) == (1, 2, 10), tag


def _w_xy(stage):
    """(the trained W_xy module, its batch norm or None) of a candidate stage, read off the backbone itself."""
    from prernn.backbones import FCStage
    if isinstance(stage, FCStage):
        return stage.linear, None
    if isinstance(stage, torch.nn.Sequential) and hasattr(stage[0], "conv2"):
        stage = stage[0]
    if hasattr(stage, "conv2"):
        return stage.conv2, stage.bn2
    bn = stage[1] if isinstance(stage[1], (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)) else None
    return stage[0], bn


def expected_recurrent_parameters(bb, layers, cell, sih):
    """[0045], [0053]: W_hh (G*H, H) + b_hh per layer, plus for gate-dependent cells (G - 1) extra copies of the
    inherited W_xy, its bias and its batch norm's scale and shift (Eq. 7); H = the layer's output width."""
    G = {"vrnn": 1, "lstm": 4, "gru": 3}[cell]
    n = 0
    for layer in layers:
        w, bn = _w_xy(bb.stages[layer])
        H = w.weight.shape[0]
        copy = w.weight.numel() + (w.bias.numel() if w.bias is not None else 0) + (2 * H if bn is not None else 0)
        n += G * H * H + G * H + (0 if (sih or G == 1) else (G - 1) * copy)
    return n


CANDIDATES = [(name, layer) for name in MINI for layer in
              prernn.candidate_layers(prernn.create_backbone(name, 4, **MINI[name][1]))]


@pytest.mark.parametrize("cell,sih", VARIANTS)
@pytest.mark.parametrize("name,layer", CANDIDATES)
def test_every_candidate_converts_steps_counts_and_round_trips(name, layer, cell, sih, tmp_path):
    """Every mini backbone x candidate x cell x SIH: step == forward == the step-by-step reference, the gate
    statistics cover the layer, the recurrent parameter count is [0045]/[0053]'s, and the saved model rebuilds
    from its config to the same outputs."""
    torch.manual_seed(0)
    bb = prernn.create_backbone(name, 4, **MINI[name][1]).eval()
    m = prernn.convert(bb, [layer], cell, sih).eval()
    clips = _clip(name)
    with torch.no_grad():
        out = m(clips)
        ref, gates = m.forward_reference(clips, record=True)
        state, steps = None, []
        for t in range(clips.shape[1]):
            o, state = m.step(clips[:, t], state)
            steps.append(o)
    assert out.shape == (2, 3, 4) and torch.isfinite(out).all()
    assert torch.allclose(ref, out, atol=1e-5) and torch.allclose(torch.stack(steps, 1), out, atol=1e-5)
    H = m.recurrent_layers()[layer].hidden_size
    assert set(gates[layer]) == set(prernn.GATE_NAMES[cell]) and all(g.shape == (2, 3, H) for g in gates[layer].values())
    stats = prernn.gate_statistics(m, clips)[layer]
    assert set(stats["gates"]) == set(prernn.GATE_NAMES[cell])
    assert all(g["inside"] + g["outside"] == 2 * 3 * H for g in stats["gates"].values())
    assert prernn.count_recurrent_parameters(m) == expected_recurrent_parameters(bb, [layer], cell, sih)
    torch.save({"config": m.config, "state_dict": m.state_dict()}, tmp_path / "m.pt")
    ck = torch.load(tmp_path / "m.pt", weights_only=True)
    rebuilt = prernn.build_from_config(json.loads(json.dumps(ck["config"])))
    rebuilt.load_state_dict(ck["state_dict"])
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(clips), out)
    assert rebuilt.config == m.config and prernn.trunk_boundary(rebuilt) == prernn.trunk_boundary(bb, [layer])


MIXED = [("vgg_mini", ["conv2", "conv3", "fc6"]), ("vgg_mini", ["conv3", "fc7"]), ("c3d_mini", ["conv3", "fc6", "fc7"]),
         ("resnet_mini", ["layer1", "layer3_1"])]


@pytest.mark.parametrize("name,layers", MIXED)
def test_mixed_conv_and_fc_combinations(name, layers):
    """Conv and fc candidates together ([0065]): every one recurrent, step == forward, the trunk ends below the
    lowest, features entering there give the same outputs, and with VRNN cells the whole model at t = 0 is the
    trained CNN on frame 0 (a conv layer feeding a map feeds the trained map at t = 0; a VRNN fc layer is its
    trained layer) unless the layer absorbs the global pooling (Eq. 6's ReLU after the pooling)."""
    torch.manual_seed(1)
    bb = prernn.create_backbone(name, 4, **MINI[name][1]).eval()
    for cell, sih in VARIANTS:
        m = prernn.convert(bb, layers, cell, sih).eval()
        assert list(m.recurrent_layers()) == layers and prernn.trunk_boundary(m) == layers[0]
        clips = _clip(name)
        with torch.no_grad():
            out = m(clips)
            feats = bb.forward_stages(clips.flatten(0, 1), stop=layers[0]).unflatten(0, (2, 3))
            assert torch.allclose(m(feats, start=layers[0]), out, atol=1e-5)
            state, steps = None, []
            for t in range(3):
                o, state = m.step(clips[:, t], state)
                steps.append(o)
        assert torch.allclose(torch.stack(steps, 1), out, atol=1e-5), (cell, sih)
        assert set(state) == set(layers)
        assert prernn.count_recurrent_parameters(m) == expected_recurrent_parameters(bb, layers, cell, sih)
        if cell == "vrnn" and not any(x in bb.absorbs for x in layers):
            with torch.no_grad():
                assert torch.allclose(out[:, 0], bb(clips[:, 0]), atol=1e-5)


@pytest.mark.parametrize("name", ["vgg16", "resnet18"])
def test_real_layout_conv_candidates_shapes_and_counts(name):
    """vgg16 / resnet18 on the meta device: every candidate converts for every cell, the output shape holds and
    the recurrent parameters are [0045]/[0053]'s (e.g. conv5_3: C = 512, 3x3x512 kernels)."""
    with torch.device("meta"):
        bb = prernn.create_backbone(name, 10)
        for layer in bb.candidates:
            for cell, sih in VARIANTS:
                m = prernn.convert(bb, [layer], cell, sih)
                assert tuple(m(torch.empty(1, 2, 3, 224, 224)).shape) == (1, 2, 10), (layer, cell, sih)
                assert prernn.count_recurrent_parameters(m) == expected_recurrent_parameters(bb, [layer], cell, sih)
    if name == "vgg16":
        C, K = 512, 512 * 9
        assert expected_recurrent_parameters(bb, ["conv5_3"], "lstm", False) == 4 * C * C + 4 * C + 3 * (C * K + C)


def test_layer_placement_and_start_features():
    torch.manual_seed(1)
    bb = prernn.create_backbone("vgg_mini", 4, input_size=16).eval()
    m = prernn.convert(bb, ["fc7"], "lstm").eval()
    assert list(m.recurrent_layers()) == ["fc7"]
    assert list(m.stages) == list(bb.stages)
    clips = _clip("vgg_mini")
    boundary = prernn.trunk_boundary(m)
    assert boundary == "fc6"
    with torch.no_grad():
        feats = bb.forward_stages(clips.flatten(0, 1), stop=boundary).unflatten(0, (2, 3))  # (B, T, 64, 2, 2)
        assert torch.allclose(m(feats, start=boundary), m(clips), atol=1e-6)
        # below the converted layer runs per frame: fc6 of the converted model == the original fc6
        m2 = prernn.convert(bb, ["fc7"], "vrnn").eval()
        y = m2(feats, start="fc6")
        # at t = 0 from a zero state the whole VRNN model equals the original CNN on frame 0
        assert torch.allclose(y[:, 0], bb(clips[:, 0]), atol=1e-5)
    with pytest.raises(ValueError, match="fc6"):
        m(feats, start="fc9")
    r = prernn.convert(prernn.create_backbone("resnet_mini", 4), ["layer3_1"], "gru")
    assert "pool" not in r.stages and list(r.recurrent_layers()) == ["layer3_1"]


def test_stacked_fc6_fc7_and_traditional_names():
    bb = prernn.create_backbone("c3d_mini", 4)
    m = prernn.convert(bb, ["fc7", "fc6"], "gru", True)
    assert list(m.recurrent_layers()) == ["fc6", "fc7"] and m.config["layers"] == ["fc6", "fc7"]
    t = prernn.traditional(bb, "lstm", 2, hidden_size=32)
    assert list(t.recurrent_layers()) == ["rnn1", "rnn2"]
    assert "classifier" in t.stages and t.stages["classifier"].linear.weight.shape == (4, 32)
    assert prernn.traditional(bb, "gru").recurrent_layers()["rnn1"].hidden_size == 128  # width of fc7


def test_bad_arguments_name_allowed_values():
    bb = prernn.create_backbone("vgg_mini", 3)
    allowed = r"\['conv1', 'conv2', 'conv3', 'fc6', 'fc7'\]"
    with pytest.raises(ValueError, match=allowed):
        prernn.convert(bb, ["classifier"], "lstm")
    with pytest.raises(ValueError, match=allowed):
        prernn.convert(bb, [], "lstm")
    with pytest.raises(ValueError, match="lstm"):
        prernn.convert(bb, ["fc6"], "vrnn", sih=True)
    with pytest.raises(ValueError, match=r"\['vrnn', 'lstm', 'gru'\]"):
        prernn.convert(bb, ["fc6"], "transformer")
    with pytest.raises(ValueError, match="before"):
        prernn.convert(bb, ["fc6"], "gru", gru_reset="middle")
    with pytest.raises(ValueError, match="num_layers"):
        prernn.traditional(bb, "lstm", 3)
    with pytest.raises(ValueError, match="'fc6' is not a submodule of Linear"):  # any nn.Module: prernn.generic
        prernn.convert(torch.nn.Linear(2, 2), ["fc6"], "lstm")


def test_convert_does_not_modify_model_and_copies_weights():
    torch.manual_seed(2)
    bb = prernn.create_backbone("vgg_mini", 3)
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    m = prernn.convert(bb, ["fc6", "fc7"], "lstm")
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1.0)
    for k, v in bb.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_inherited_and_new_parameters_split():
    bb = prernn.create_backbone("vgg_mini", 3)
    m = prernn.convert(bb, ["fc7"], "lstm")
    new = {id(p) for p in m.new_parameters()}
    inh = {id(p) for p in m.inherited_parameters()}
    rl = m.recurrent_layers()["fc7"]
    assert new == {id(rl.recurrence.weight_hh), id(rl.recurrence.bias_hh)}
    assert id(rl.weight_ih) in inh and not (new & inh)
    assert len(new) + len(inh) == len(list(m.parameters()))
    t = prernn.traditional(bb, "gru")
    tnew = {id(p) for p in t.new_parameters()}
    assert id(t.stages["classifier"].linear.weight) in tnew and id(t.stages["rnn1"].weight_ih) in tnew
    assert id(t.stages["fc7"].linear.weight) not in tnew


def test_dropout_of_replaced_layer_kept_and_eval_deterministic():
    torch.manual_seed(3)
    bb = prernn.create_backbone("vgg_mini", 3, input_size=16)
    m = prernn.convert(bb, ["fc6"], "vrnn")
    assert m.recurrent_layers()["fc6"].dropout.p == 0.5
    x = _clip("vgg_mini")
    m.train()
    assert not torch.allclose(m(x), m(x))
    m.eval()
    assert torch.equal(m(x), m(x))


def test_build_from_config_round_trip(tmp_path):
    torch.manual_seed(4)
    bb = prernn.create_backbone("resnet_mini", 3).eval()
    for model in (bb, prernn.convert(bb, ["layer3_1"], "lstm", True, hh_init="xavier"),
                  prernn.traditional(bb, "gru", 2, hidden_size=16),
                  prernn.convert(prernn.create_backbone("vgg_mini", 3), ["fc6", "fc7"], "gru", gru_reset="after")):
        model.eval()
        path = tmp_path / "m.pt"
        torch.save({"config": model.config, "state_dict": model.state_dict(), "meta": {}}, path)
        ck = torch.load(path, weights_only=True)
        cfg = json.loads(json.dumps(ck["config"]))
        rebuilt = prernn.build_from_config(cfg)
        rebuilt.load_state_dict(ck["state_dict"])
        rebuilt.eval()
        x = torch.randn(2, 3, 3, 16, 16) if not isinstance(model, prernn.Backbone) else torch.randn(2, 3, 16, 16)
        with torch.no_grad():
            assert torch.equal(rebuilt(x), model(x))
        assert rebuilt.config == model.config
    with pytest.raises(ValueError, match="kind"):
        prernn.build_from_config({"kind": "other", "backbone": bb.config})
    frames = prernn.build_from_config({"kind": "frames", "backbone": bb.config, "layers": []})
    frames.load_state_dict(bb.state_dict())
    clip = torch.randn(2, 3, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(frames.eval()(clip)[:, 1], bb(clip[:, 1]), atol=1e-6)
    assert prernn.count_recurrent_parameters(frames) == 0 and frames.recurrent_layers() == {}


H, D = 4096, 25088  # VGG16 fc6 25088 -> 4096, fc7 4096 -> 4096


@pytest.mark.parametrize("cell,sih,layers,expected", [
    ("vrnn", False, ["fc6"], H * H + H),
    ("lstm", True, ["fc6"], 4 * H * H + 4 * H),
    ("lstm", False, ["fc6"], 4 * H * H + 4 * H + 3 * (H * D + H)),
    ("gru", True, ["fc7"], 3 * H * H + 3 * H),
    ("gru", False, ["fc7"], 3 * H * H + 3 * H + 2 * (H * H + H)),
    ("lstm", False, ["fc6", "fc7"], 2 * (4 * H * H + 4 * H) + 3 * (H * D + H) + 3 * (H * H + H)),
    ("lstm", True, ["fc6", "fc7"], 2 * (4 * H * H + 4 * H)),
])
def test_count_recurrent_parameters_vgg16(cell, sih, layers, expected):
    with torch.device("meta"):
        bb = prernn.create_backbone("vgg16", 101)
        m = prernn.convert(bb, layers, cell, sih)
    assert prernn.count_recurrent_parameters(m) == expected
    assert prernn.count_recurrent_parameters(bb) == 0


def test_sih_saves_about_82_percent_and_traditional_counts():
    with torch.device("meta"):
        bb = prernn.create_backbone("vgg16", 101)
        gd = prernn.count_recurrent_parameters(prernn.convert(bb, ["fc6"], "lstm"))
        sih = prernn.count_recurrent_parameters(prernn.convert(bb, ["fc6"], "lstm", True))
        trad1 = prernn.count_recurrent_parameters(prernn.traditional(bb, "lstm", 1))
        trad2 = prernn.count_recurrent_parameters(prernn.traditional(bb, "gru", 2, hidden_size=512))
    assert 0.81 < 1 - sih / gd < 0.83  # [0068]: "reduces the recurrent parameters by up to 82%"
    assert trad1 == 4 * H * H + 4 * H * H + 8 * H  # W_ih + W_hh + b_ih + b_hh (new classifier not counted)
    h = 512
    assert trad2 == (3 * h * H + 3 * h * h + 6 * h) + (3 * h * h + 3 * h * h + 6 * h)


def test_count_conv_gate_dependent_copies():
    bb = prernn.create_backbone("resnet_mini", 3)
    C = 64
    conv_copy = C * C * 9 + 2 * C  # conv2 weight + bn2 weight/bias
    for cell, G in (("lstm", 4), ("gru", 3)):
        gd = prernn.count_recurrent_parameters(prernn.convert(bb, ["layer3_1"], cell))
        sih = prernn.count_recurrent_parameters(prernn.convert(bb, ["layer3_1"], cell, True))
        assert sih == G * C * C + G * C
        assert gd == sih + (G - 1) * conv_copy


def test_the_layer_set_and_sih_rules_every_caller_uses():
    assert prernn.check_layers(["fc7", "fc6"], ["fc6", "fc7"]) == ["fc6", "fc7"]
    assert prernn.check_layers("fc7", ["fc6", "fc7"]) == ["fc7"]
    for bad, message in (([], "an empty layer set"), (["fc8"], r"\['fc8'\] not candidate layers"),
                         (["fc6", "fc6"], r"\['fc6'\] named twice")):
        with pytest.raises(ValueError, match=message):
            prernn.check_layers(bad, ["fc6", "fc7"])
    assert prernn.GATED_CELLS == ("lstm", "gru")
    prernn.check_sih("gru", True)
    prernn.check_sih("vrnn", False)
    with pytest.raises(ValueError, match="sih=True needs a gated cell"):
        prernn.check_sih("vrnn", True)


def test_model_config_round_trip_and_the_builders_config():
    """Each builder's ModelConfig gives the dict checkpoints store (its kind's keys only) and reads back from it."""
    bb = prernn.create_backbone("vgg_mini", 3, input_size=16)
    models = [prernn.convert(bb, ["fc6"], "gru", True, gru_reset="after"), prernn.traditional(bb, "lstm", 2, 8),
              prernn.frame_model(bb)]
    for m in models:
        assert isinstance(m.model_config, prernn.ModelConfig) and m.config == m.model_config.to_dict()
        assert prernn.ModelConfig.from_dict(json.loads(json.dumps(m.config))) == m.model_config
        assert prernn.build_from_config(m.model_config).config == m.config  # a ModelConfig builds as its dict does
    prernn_cfg, trad_cfg, frames_cfg = (m.config for m in models)
    assert list(prernn_cfg) == ["kind", "backbone", "layers", "cell", "sih", "hh_init", "gru_reset", "candidates",
                                "trunk_boundary"]
    assert (trad_cfg["num_layers"], trad_cfg["hidden_size"]) == (2, 8) and "num_layers" not in prernn_cfg
    assert "hh_init" not in frames_cfg and frames_cfg["cell"] is None
    copied = models[0].model_config.to_dict()
    copied["layers"].append("fc7")
    copied["backbone"]["num_classes"] = 9  # to_dict gives a copy: the typed config and the model are unchanged
    assert models[0].model_config.layers == ["fc6"] and models[0].config["backbone"]["num_classes"] == 3


def test_model_config_defaults_are_the_builders_defaults():
    bb = prernn.create_backbone("vgg_mini", 3, input_size=16)
    cfg = prernn.ModelConfig.from_dict({"kind": "traditional", "cell": "gru", "epochs": 3, "lr_new": 0.1})
    assert (cfg.num_layers, cfg.hidden_size, cfg.sih, cfg.hh_init, cfg.gru_reset) == (1, None, False, "orthogonal",
                                                                                     "before")
    assert prernn.build_from_config(cfg, bb).config == prernn.traditional(bb, "gru").config
    trial = {"kind": "prernn", "layers": ["fc7"], "cell": "lstm", "name": "prernn-lstm-fc7", "seed": 0}
    assert prernn.build_from_config(trial, bb).config == prernn.convert(bb, ["fc7"], "lstm").config


@pytest.mark.parametrize("config, message", [
    ({"kind": "other"}, "unknown config kind 'other'; expected one of ['prernn', 'traditional', 'frames']"),
    ({"cell": "gru"}, "unknown config kind None"),
    ({"kind": "prernn", "cell": "gru"}, "prernn config is missing keys ['layers']; got keys ['cell', 'kind']"),
    ({"kind": "traditional"}, "traditional config is missing keys ['cell']"),
    (["prernn"], "config must be a dict, got list"),
])
def test_model_config_refuses_unknown_kinds_and_missing_keys(config, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        prernn.ModelConfig.from_dict(config)
    with pytest.raises(ValueError, match="unknown config kind 'rnn'"):
        prernn.ModelConfig("rnn")
    with pytest.raises(ValueError, match="frames config names no backbone or builder; pass the trained model"):
        prernn.build_from_config({"kind": "frames"})

"""gate_statistics on crafted inputs and the claim-12 saturation rule."""
import json

import pytest
import torch

import prernn


def _model(cell, sih=False, bias=None, zero=False):
    torch.manual_seed(0)
    bb = prernn.create_backbone("vgg_mini", 3, input_size=16)
    m = prernn.convert(bb, ["fc7"], cell, sih)
    layer = m.recurrent_layers()["fc7"]
    with torch.no_grad():
        if zero:
            layer.weight_ih.zero_()
            layer.recurrence.weight_hh.zero_()
        if bias is not None:
            layer.bias_ih.fill_(bias)
    return m


def test_huge_bias_is_right_saturated():
    m = _model("lstm", bias=50.0).train()
    feats = torch.randn(2, 4, 128)
    stats = prernn.gate_statistics(m, feats, start="fc7")
    json.dumps(stats)
    assert m.training  # mode restored
    s = stats["fc7"]
    assert s["cell"] == "lstm" and set(s["gates"]) == {"input", "forget", "output"} and s["note"] is None
    for g in s["gates"].values():
        assert g["right"] == [1.0] * 128 and g["left"] == [0.0] * 128
        assert g["inside"] == 0 and g["outside"] == 2 * 4 * 128
        assert g["hist"][-1] == 2 * 4 * 128 and sum(g["hist"]) == 2 * 4 * 128
    assert prernn.is_saturated(s) is True


def test_half_activations_are_unsaturated_and_batches_pool():
    m = _model("gru", sih=True, bias=0.0, zero=True)
    feats = torch.randn(3, 5, 128)
    stats = prernn.gate_statistics(m, [(feats, 0), (feats[:1], 1)], start="fc7")  # iterable of (x, y)
    s = stats["fc7"]
    assert set(s["gates"]) == {"reset", "update"}
    for g in s["gates"].values():  # every activation is exactly sigmoid(0) = 0.5
        n = (3 + 1) * 5 * 128
        assert g["inside"] == n and g["outside"] == 0
        assert g["hist"][5] == n and g["left"] == [0.0] * 128
    assert prernn.is_saturated(s) is False


def test_left_saturated_mixed_units():
    m = _model("lstm", zero=True, bias=0.0)
    layer = m.recurrent_layers()["fc7"]
    with torch.no_grad():  # first half of every gate's units strongly negative
        for g in range(4):
            layer.bias_ih[g * 128:g * 128 + 64] = -50.0
    s = prernn.gate_statistics(m, torch.randn(2, 3, 128), start="fc7")["fc7"]
    fg = s["gates"]["forget"]
    assert fg["left"][:64] == [1.0] * 64 and fg["left"][64:] == [0.0] * 64
    assert fg["inside"] == fg["outside"]  # exactly half -> a tie
    assert prernn.is_saturated(s) is False  # tie -> not saturated


def test_vrnn_has_no_gates():
    m = _model("vrnn")
    s = prernn.gate_statistics(m, torch.randn(1, 2, 3, 16, 16))["fc7"]
    assert s["cell"] == "vrnn" and s["gates"] == {} and "no gates" in s["note"]
    assert prernn.is_saturated(s) is None


def test_is_saturated_crafted_stats():
    def g(i, o):
        return {"left": [], "right": [], "hist": [0] * 10, "inside": i, "outside": o}
    assert prernn.is_saturated({"gates": {"reset": g(3, 10), "update": g(5, 0)}}) is True  # 8 < 10
    assert prernn.is_saturated({"gates": {"reset": g(5, 5)}}) is False  # tie
    assert prernn.is_saturated({"gates": {"reset": g(6, 1), "update": g(0, 4)}}) is False  # 6 > 5
    assert prernn.is_saturated({"cell": "vrnn", "gates": {}, "note": "x"}) is None
    with pytest.raises(ValueError, match="low"):
        prernn.is_saturated({"gates": {"reset": g(1, 2)}, "low": 0.2, "high": 0.9})


def test_traditional_layers_have_stats_too():
    torch.manual_seed(1)
    t = prernn.traditional(prernn.create_backbone("resnet_mini", 3), "lstm", 2, hidden_size=8)
    stats = prernn.gate_statistics(t, torch.randn(2, 3, 3, 16, 16))
    assert set(stats) == {"rnn1", "rnn2"}
    for s in stats.values():
        for g in s["gates"].values():
            assert len(g["left"]) == 8 and g["inside"] + g["outside"] == 2 * 3 * 8


@pytest.mark.parametrize("cell,counts,embodiment,pooled", [
    ("lstm", {"input": (0, 10), "forget": (9, 1), "output": (0, 10)}, False, True),   # [0057]: forget gate central
    ("lstm", {"input": (9, 1), "forget": (1, 9), "output": (9, 1)}, True, False),     # [0056]: forget gate saturated
    ("gru", {"reset": (0, 10), "update": (6, 4)}, False, True),                       # [0060]: both must be saturated
    ("gru", {"reset": (3, 7), "update": (4, 6)}, True, True),
    ("gru", {"reset": (5, 5), "update": (5, 5)}, False, False),                       # ties
    ("vrnn", {}, None, None),                                                          # no gates: not judged
])
def test_is_saturated_per_rule_and_cell(cell, counts, embodiment, pooled):
    def g(i, o):
        return {"left": [], "right": [], "hist": [0] * 10, "inside": i, "outside": o}
    stats = {"cell": cell, "gates": {k: g(*v) for k, v in counts.items()}, "note": None}
    assert prernn.is_saturated(stats, gates="embodiment") is embodiment
    assert prernn.is_saturated(stats, gates="all") is pooled
    assert prernn.is_saturated(stats) is pooled  # the library's default: claim 12 pooled over every gate
    assert prernn.deciding_gates(cell, "embodiment") == {"lstm": ("forget",), "gru": ("reset", "update"), "vrnn": ()}[cell]
    assert prernn.deciding_gates(cell, "all") == prernn.GATE_NAMES[cell]


def test_a_deciding_gate_without_statistics_is_not_saturated_and_a_bad_rule_is_named():
    no_steps = {"cell": "lstm", "gates": {}, "note": "no time steps were seen"}
    assert prernn.is_saturated(no_steps, gates="embodiment") is False and prernn.is_saturated(no_steps) is False
    with pytest.raises(ValueError, match="gates must be one of"):
        prernn.is_saturated(no_steps, gates="forget")

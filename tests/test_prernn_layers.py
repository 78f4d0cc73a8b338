"""Every recurrent equation against an independent slow reference written here (explicit python loops over
time and gates), for fully connected and convolutional layers, each cell, gate-dependent and SIH, GRU reset
before/after; t = 0 analytic values; gradients; fast path == step-by-step path."""
import math

import pytest
import torch
import torch.nn.functional as F

import prernn
from prernn.layers import ConvRecurrent, FCRecurrent

VARIANTS = [("vrnn", False, "before"), ("lstm", False, "before"), ("lstm", True, "before"),
            ("gru", False, "before"), ("gru", True, "before"), ("gru", False, "after"), ("gru", True, "after")]


def sig(x):
    return 1.0 / (1.0 + torch.exp(-x))


def randomize(module, scale=0.3):
    """Random weights AND biases everywhere (so gate copies differ and b_hh is non-zero)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.randn_like(p) * scale)
        for name, b in module.named_buffers():
            if name.endswith("running_var"):
                b.copy_(torch.rand_like(b) + 0.5)
            elif name.endswith("running_mean"):
                b.copy_(torch.randn_like(b) * 0.1)


def reference_recurrence(u_of_gate, W, b, cell, H, T, B, act="relu", reset="before"):
    """u_of_gate(t, g) -> (B, H) input-to-hidden state of gate index g at time t. Gate order per cell:
    lstm (i, f, c, o), gru (r, z, h), vrnn (h). W: (G*H, H), b: (G*H). Pure loops, Eqs. 1-3/5/8/9/11/12."""
    Wg = [W[g * H:(g + 1) * H] for g in range(W.shape[0] // H)]
    bg = [b[g * H:(g + 1) * H] for g in range(b.shape[0] // H)]
    h = torch.zeros(B, H, dtype=torch.float64)
    c = torch.zeros(B, H, dtype=torch.float64)
    outs = []
    for t in range(T):
        if cell == "vrnn":
            a = u_of_gate(t, 0) + h @ Wg[0].T + bg[0]
            h = torch.clamp(a, min=0) if act == "relu" else torch.tanh(a)
        elif cell == "lstm":
            i = sig(u_of_gate(t, 0) + h @ Wg[0].T + bg[0])
            f = sig(u_of_gate(t, 1) + h @ Wg[1].T + bg[1])
            ct = torch.tanh(u_of_gate(t, 2) + h @ Wg[2].T + bg[2])
            o = sig(u_of_gate(t, 3) + h @ Wg[3].T + bg[3])
            c = f * c + i * ct
            h = o * torch.tanh(c)
        else:
            r = sig(u_of_gate(t, 0) + h @ Wg[0].T + bg[0])
            z = sig(u_of_gate(t, 1) + h @ Wg[1].T + bg[1])
            if reset == "before":
                ht = torch.tanh(u_of_gate(t, 2) + (r * h) @ Wg[2].T + bg[2])
            else:
                ht = torch.tanh(u_of_gate(t, 2) + r * (h @ Wg[2].T + bg[2]))
            h = (1 - z) * h + z * ht
        outs.append(h)
    return torch.stack(outs, 1)


def make_fc(cell, sih, reset, D=7, H=5):
    torch.manual_seed(1)
    linear = torch.nn.Linear(D, H)
    layer = FCRecurrent.from_linear(linear, cell, sih=sih, activation="relu", gru_reset=reset).double()
    randomize(layer)
    return layer


@pytest.mark.parametrize("cell,sih,reset", VARIANTS)
def test_fc_layer_matches_slow_reference(cell, sih, reset):
    B, T, D, H = 3, 4, 7, 5
    layer = make_fc(cell, sih, reset, D, H).eval()
    x = torch.randn(B, T, D, dtype=torch.float64)
    W_ih, b_ih = layer.weight_ih.detach(), layer.bias_ih.detach()

    def u(t, g):  # Eq. 7 (gate-dependent: gate g's own rows) or Eq. 10 (SIH / VRNN: one shared state)
        rows = slice(0, H) if (sih or cell == "vrnn") else slice(g * H, (g + 1) * H)
        return x[:, t] @ W_ih[rows].T + b_ih[rows]

    ref = reference_recurrence(u, layer.recurrence.weight_hh.detach(), layer.recurrence.bias_hh.detach(),
                               cell, H, T, B, "relu", reset)
    fast = layer(x)
    slow, _ = layer.forward_reference(x)
    assert fast.shape == (B, T, H)
    assert torch.allclose(fast, ref, atol=1e-10), (fast - ref).abs().max()
    assert torch.allclose(slow, ref, atol=1e-10)


def bn_ref(x, bn, rows=None):
    rows = rows if rows is not None else slice(None)
    rm, rv = bn.running_mean[rows], bn.running_var[rows]
    w, b = bn.weight[rows], bn.bias[rows]
    return (x - rm[None, :, None, None]) / torch.sqrt(rv[None, :, None, None] + bn.eps) * w[None, :, None, None] \
        + b[None, :, None, None]


def make_block(downsample):
    from prernn.backbones import BasicBlock
    torch.manual_seed(2)
    block = BasicBlock(4, 6, stride=2) if downsample else BasicBlock(6, 6)
    block = block.double()
    randomize(block)
    return block.eval()


@pytest.mark.parametrize("downsample", [False, True])
@pytest.mark.parametrize("cell,sih,reset", VARIANTS)
def test_conv_layer_matches_slow_reference(cell, sih, reset, downsample):
    B, T, C = 2, 3, 6
    block = make_block(downsample)
    layer = ConvRecurrent(block, cell, sih=sih, gru_reset=reset).double()
    randomize(layer)
    layer.train()  # Eq. 6: batch norm uses the trained running statistics even while training
    cin = 4 if downsample else 6
    x = torch.randn(B, T, cin, 8, 8, dtype=torch.float64)

    def u(t, g):  # Eq. 6/7/10 conv: P(B(W_g * x_t) + gamma_t)
        xt = x[:, t]
        gamma = xt
        if layer.downsample is not None:
            gamma = bn_ref(F.conv2d(xt, layer.downsample[0].weight, stride=2), layer.downsample[1])
        y = torch.clamp(bn_ref(F.conv2d(xt, layer.conv1.weight, stride=layer.conv1.stride, padding=1), layer.bn1), min=0)
        g = 0 if (sih or cell == "vrnn") else g
        rows = slice(g * C, (g + 1) * C)
        y = bn_ref(F.conv2d(y, layer.conv2.weight[rows], padding=1), layer.bn2, rows)
        return (y + gamma).mean((2, 3))

    ref = reference_recurrence(u, layer.recurrence.weight_hh.detach(), layer.recurrence.bias_hh.detach(),
                               cell, C, T, B, "relu", reset)
    with torch.no_grad():
        fast = layer(x)
        slow, _ = layer.forward_reference(x)
    assert fast.shape == (B, T, C)
    assert torch.allclose(fast, ref, atol=1e-10), (fast - ref).abs().max()
    assert torch.allclose(slow, ref, atol=1e-10)


def test_gate_copies_start_equal_to_trained_weights():
    torch.manual_seed(0)
    linear = torch.nn.Linear(6, 4)
    for cell, G in (("lstm", 4), ("gru", 3)):
        layer = FCRecurrent.from_linear(linear, cell)
        for g in range(G):  # Eqs. 7-9: every gate starts from W_xy and b
            assert torch.equal(layer.weight_ih[g * 4:(g + 1) * 4], linear.weight)
            assert torch.equal(layer.bias_ih[g * 4:(g + 1) * 4], linear.bias)
        sih = FCRecurrent.from_linear(linear, cell, sih=True)  # Eq. 10: the trained layer itself
        assert torch.equal(sih.weight_ih, linear.weight) and torch.equal(sih.bias_ih, linear.bias)
        assert torch.count_nonzero(layer.recurrence.bias_hh) == 0
        Wh = layer.recurrence.weight_hh.detach()
        for g in range(G):  # orthogonal blocks by default
            blk = Wh[g * 4:(g + 1) * 4]
            assert torch.allclose(blk @ blk.T, torch.eye(4), atol=1e-5)


@pytest.mark.parametrize("cell,sih,reset", VARIANTS)
def test_t0_analytic_value_and_later_steps_use_w_hh(cell, sih, reset):
    torch.manual_seed(3)
    bb = prernn.create_backbone("vgg_mini", 3, input_size=16).eval()
    m = prernn.convert(bb, ["fc7"], cell, sih, gru_reset=reset).eval()
    feats = torch.randn(2, 3, 128)  # entering fc7, (B, T, D)
    fc7 = bb.stages["fc7"]
    pre = fc7.linear(feats[:, 0])  # the trained layer's own pre-activation, W_xy x + b
    layer = m.recurrent_layers()["fc7"]
    with torch.no_grad():
        y = layer(feats)
    if cell == "vrnn":
        want = fc7(feats[:, 0])  # exactly the original fc layer output
    elif cell == "lstm":
        s = torch.sigmoid(pre)
        want = s * torch.tanh(s * torch.tanh(pre))  # o * tanh(i * tanh(u))
    else:
        want = torch.sigmoid(pre) * torch.tanh(pre)  # z * tanh(u_h)
    assert torch.allclose(y[:, 0], want, atol=1e-6)
    # with T > 1, W_hh changes later outputs
    same = feats[:, :1].repeat(1, 3, 1)
    with torch.no_grad():
        a = layer(same)
        layer.recurrence.weight_hh.zero_()
        b = layer(same)
    assert torch.allclose(a[:, 0], b[:, 0], atol=1e-6)
    assert not torch.allclose(a[:, 1:], b[:, 1:], atol=1e-4)


@pytest.mark.parametrize("cell,sih", [("vrnn", False), ("lstm", False), ("lstm", True), ("gru", False), ("gru", True)])
def test_conv_t0_analytic_value(cell, sih):
    torch.manual_seed(4)
    bb = prernn.create_backbone("resnet_mini", 3).eval()
    randomize(bb.stages["layer3_1"], 0.2)
    m = prernn.convert(bb, ["layer3_1"], cell, sih).eval()
    x = torch.randn(2, 2, 64, 4, 4)  # features entering layer3_1
    blk = bb.stages["layer3_1"]
    with torch.no_grad():
        y = m.recurrent_layers()["layer3_1"](x)
        x0 = x[:, 0]
        pre = (blk.bn2(blk.conv2(blk.relu(blk.bn1(blk.conv1(x0))))) + x0).mean((2, 3))  # P(B(W*x) + gamma)
    if cell == "vrnn":
        want = torch.relu(pre)
    elif cell == "lstm":
        s = torch.sigmoid(pre)
        want = s * torch.tanh(s * torch.tanh(pre))
    else:
        want = torch.sigmoid(pre) * torch.tanh(pre)
    assert torch.allclose(y[:, 0], want, atol=1e-5)


@pytest.mark.parametrize("cell,sih", [("vrnn", False), ("lstm", False), ("lstm", True), ("gru", False), ("gru", True)])
@pytest.mark.parametrize("backbone,layer", [("vgg_mini", "fc6"), ("resnet_mini", "layer3_1")])
def test_gradients_reach_inherited_and_hidden_weights(cell, sih, backbone, layer):
    torch.manual_seed(5)
    bb = prernn.create_backbone(backbone, 3, **({"input_size": 16} if backbone == "vgg_mini" else {}))
    m = prernn.convert(bb, [layer], cell, sih).train()
    m(torch.randn(2, 3, 3, 16, 16)).square().mean().backward()
    rl = m.recurrent_layers()[layer]
    inherited = rl.weight_ih if backbone == "vgg_mini" else rl.conv2.weight
    assert inherited.grad is not None and inherited.grad.abs().sum() > 0
    assert rl.recurrence.weight_hh.grad is not None and rl.recurrence.weight_hh.grad.abs().sum() > 0
    if not sih and cell != "vrnn" and backbone == "vgg_mini":  # gate copies are fine-tuned separately
        H = rl.hidden_size
        g = rl.weight_ih.grad
        assert not torch.allclose(g[:H], g[H:2 * H])


def test_fast_path_agrees_with_reference_in_float32_and_training_grads():
    torch.manual_seed(6)
    for cell, sih in [("lstm", False), ("lstm", True), ("gru", False), ("vrnn", False)]:
        layer = FCRecurrent.from_linear(torch.nn.Linear(10, 8), cell, sih=sih)
        randomize(layer)
        x = torch.randn(4, 6, 10, requires_grad=True)
        a = layer(x)
        b, _ = layer.forward_reference(x)
        assert torch.allclose(a, b, atol=1e-5)
        ga, = torch.autograd.grad(a.sum(), layer.recurrence.weight_hh)
        gb, = torch.autograd.grad(b.sum(), layer.recurrence.weight_hh)
        assert torch.allclose(ga, gb, atol=1e-4)


def test_hh_init_options():
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 16)
    for scheme in ("orthogonal", "xavier", "normal"):
        w = FCRecurrent.from_linear(lin, "lstm", hh_init=scheme).recurrence.weight_hh
        assert w.shape == (64, 16) and w.abs().sum() > 0
    xav = FCRecurrent.from_linear(lin, "lstm", hh_init="xavier").recurrence.weight_hh
    assert xav.abs().max() <= math.sqrt(6 / 32) + 1e-6
    with pytest.raises(ValueError, match="orthogonal"):
        FCRecurrent.from_linear(lin, "lstm", hh_init="zeros")

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
    shape = (1, -1) + (1,) * (x.dim() - 2)
    rm, rv = bn.running_mean[rows].view(shape), bn.running_var[rows].view(shape)
    w, b = bn.weight[rows].view(shape), bn.bias[rows].view(shape)
    return (x - rm) / torch.sqrt(rv + bn.eps) * w + b


def make_block(downsample):
    from prernn.backbones import BasicBlock
    torch.manual_seed(2)
    block = BasicBlock(4, 6, stride=2) if downsample else BasicBlock(6, 6)
    block = block.double()
    randomize(block)
    return block.eval()


def make_conv_stage(kind):
    """A VGG (2D, with / without batch norm) or C3D (3D) conv stage: conv, [bn,] ReLU, pools; 4 -> 6 channels."""
    torch.manual_seed(2)
    nn = torch.nn
    if kind == "vgg_bn":
        layers = [nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2)]
    elif kind == "vgg":
        layers = [nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(2)]
    else:
        layers = [nn.Conv3d(4, 6, 3, padding=1), nn.BatchNorm3d(6), nn.ReLU(), nn.MaxPool3d(2, ceil_mode=True)]
    stage = nn.Sequential(*layers).double()
    randomize(stage)
    return stage.eval()


STAGE_KINDS = ["block", "block_downsample", "vgg_bn", "vgg", "c3d"]


def _stage_and_input(kind, B, T):
    if kind.startswith("block"):
        down = kind == "block_downsample"
        return make_block(down), torch.randn(B, T, 4 if down else 6, 8, 8, dtype=torch.float64)
    spatial = (4, 8, 8) if kind == "c3d" else (8, 8)
    return make_conv_stage(kind), torch.randn(B, T, 4, *spatial, dtype=torch.float64)


def _conv_nd(x, weight, bias=None, **kw):
    return (F.conv3d if x.dim() == 5 else F.conv2d)(x, weight, bias, **kw)


@pytest.mark.parametrize("output", ["state", "map"])
@pytest.mark.parametrize("kind", STAGE_KINDS)
@pytest.mark.parametrize("cell,sih,reset", VARIANTS)
def test_conv_layer_matches_slow_reference(cell, sih, reset, kind, output):
    """Eq. (6) / conv Eqs. (7), (10) against explicit convs and loops, for residual blocks and VGG / C3D conv
    layers, both outputs: the pooled state, or the map fed upward, pools(ReLU(a_t) + (y_t - y0_t))."""
    B, T, C = 2, 3, 6
    stage, x = _stage_and_input(kind, B, T)
    layer = ConvRecurrent(stage, cell, sih=sih, gru_reset=reset, output=output).double()
    randomize(layer)
    layer.train()  # Eq. 6: batch norm uses the trained running statistics even while training
    G = 1 if (sih or cell == "vrnn") else {"lstm": 4, "gru": 3}[cell]

    def pre(t, g):  # B(W_g * x_t) + gamma_t of gate copy g, from the layer's own (randomised) weights
        xt = x[:, t]
        rows = slice(g * C, (g + 1) * C)
        if kind.startswith("block"):
            gamma = xt
            if layer.downsample is not None:
                gamma = bn_ref(F.conv2d(xt, layer.downsample[0].weight, stride=2), layer.downsample[1])
            z = torch.clamp(bn_ref(F.conv2d(xt, layer.conv1.weight, stride=layer.conv1.stride, padding=1),
                                   layer.bn1), min=0)
            return bn_ref(F.conv2d(z, layer.conv.weight[rows], padding=1), layer.bn, rows) + gamma
        bias = layer.conv.bias[rows]
        a = _conv_nd(xt, layer.conv.weight[rows], bias, padding=1)
        return bn_ref(a, layer.bn, rows) if layer.bn is not None else a

    def u(t, g):  # Eq. 6/7/10 conv: P(B(W_g * x_t) + gamma_t), the shared copy for SIH / VRNN
        return pre(t, 0 if G == 1 else g).flatten(2).mean(2)

    W, b = layer.recurrence.weight_hh.detach(), layer.recurrence.bias_hh.detach()
    ref = reference_recurrence(u, W, b, cell, C, T, B, "relu", reset)
    if output == "map":
        pools = [] if kind.startswith("block") else \
            list(stage)[next(i for i, m in enumerate(stage) if isinstance(m, torch.nn.ReLU)) + 1:]
        copy = 0 if G == 1 else 2  # the candidate state's copy (LSTM c~, GRU h~)
        maps = []
        for t in range(T):
            y0 = reference_recurrence(lambda _t, g: u(t, g), W, b, cell, C, 1, B, "relu", reset)[:, 0]
            delta = (ref[:, t] - y0).reshape(B, C, *[1] * (x.dim() - 3))
            m = torch.clamp(pre(t, copy), min=0) + delta
            for p in pools:
                m = p(m)
            maps.append(m)
        ref = torch.stack(maps, 1)
    with torch.no_grad():
        fast = layer(x)
        slow, _ = layer.forward_reference(x)
        state, steps = None, []
        for t in range(T):
            o, state = layer.step(x[:, t], state)
            steps.append(o)
    assert fast.shape == ref.shape and (output == "map" or fast.shape == (B, T, C))
    assert torch.allclose(fast, ref, atol=1e-10), (fast - ref).abs().max()
    assert torch.allclose(slow, ref, atol=1e-10)
    assert torch.allclose(torch.stack(steps, 1), ref, atol=1e-10)


def test_conv_layer_refuses_what_eq6_does_not_cover():
    nn = torch.nn
    with pytest.raises(ValueError, match="cannot make a Linear stage recurrent"):
        ConvRecurrent(nn.Linear(3, 3), "lstm")
    with pytest.raises(ValueError, match="followed by a ReLU"):
        ConvRecurrent(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh()), "gru")
    with pytest.raises(ValueError, match="groups=2"):
        ConvRecurrent(nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.ReLU()), "gru")
    with pytest.raises(ValueError, match=r"output 'pooled'.*\['state', 'map'\]"):
        ConvRecurrent(nn.Sequential(nn.Conv2d(4, 4, 3), nn.ReLU()), "gru", output="pooled")


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


def t0_state(cell, u):
    """The README's t = 0 values from a zero state with b_hh = 0 (as converted), u the input-to-hidden state."""
    if cell == "vrnn":
        return torch.relu(u)
    s = torch.sigmoid(u)
    return s * torch.tanh(s * torch.tanh(u)) if cell == "lstm" else s * torch.tanh(u)  # LSTM o*tanh(i*tanh u); GRU z*h~


@pytest.mark.parametrize("cell,sih", [("vrnn", False), ("lstm", False), ("lstm", True), ("gru", False), ("gru", True)])
def test_conv_t0_analytic_value(cell, sih):
    """The last residual block with the pooling (output "state"): y_0 = t0_state(P(a_0)); for the VRNN that is
    ReLU(P(a)), Eq. 6's order, not the trained block + pooling's P(ReLU(a)) (equal only where a >= 0)."""
    torch.manual_seed(4)
    bb = prernn.create_backbone("resnet_mini", 3).eval()
    randomize(bb.stages["layer3_1"], 0.2)
    m = prernn.convert(bb, ["layer3_1"], cell, sih).eval()
    x = torch.randn(2, 2, 64, 4, 4)  # features entering layer3_1
    blk = bb.stages["layer3_1"]
    with torch.no_grad():
        y = m.recurrent_layers()["layer3_1"](x)
        x0 = x[:, 0]
        a = blk.bn2(blk.conv2(blk.relu(blk.bn1(blk.conv1(x0))))) + x0  # B(W*x) + gamma
        trained = bb.stages["pool"](blk(x0))  # P(ReLU(a))
    assert torch.allclose(y[:, 0], t0_state(cell, a.mean((2, 3))), atol=1e-5)
    if cell == "vrnn":
        assert not torch.allclose(y[:, 0], trained, atol=1e-3)  # the ReLU moved after the pooling
        with torch.no_grad():  # where a >= 0 everywhere, ReLU and pooling commute: the trained output
            blk.bn2.bias.fill_(50.0)
            assert ((blk.bn2(blk.conv2(blk.relu(blk.bn1(blk.conv1(x0))))) + x0) >= 0).all()
            yp = prernn.convert(bb, ["layer3_1"], cell, sih).eval().recurrent_layers()["layer3_1"](x)
            assert torch.allclose(yp[:, 0], bb.stages["pool"](blk(x0)), atol=1e-4)


MAP_LAYERS = [("vgg_mini", "conv1"), ("vgg_mini", "conv3"), ("resnet_mini", "layer1"), ("resnet_mini", "layer2"),
              ("c3d_mini", "conv3")]


@pytest.mark.parametrize("cell,sih", [("vrnn", False), ("lstm", False), ("lstm", True), ("gru", False), ("gru", True)])
@pytest.mark.parametrize("backbone,layer", MAP_LAYERS)
def test_conv_map_is_the_trained_layer_at_t0(backbone, layer, cell, sih):
    """A conv layer below another conv / fc layer (output "map"): at t = 0 the map it feeds upward is exactly the
    trained stage's output for every cell and form; its state follows t0_state(P(a)); later steps differ."""
    torch.manual_seed(8)
    bb = prernn.create_backbone(backbone, 3, **({"input_size": 16} if backbone == "vgg_mini" else {})).eval()
    randomize(bb.stages[layer], 0.3)
    m = prernn.convert(bb, [layer], cell, sih).eval()
    rl = m.recurrent_layers()[layer]
    assert rl.output == "map"
    frames = torch.randn(2 * 3, 3, *((4, 16, 16) if backbone == "c3d_mini" else (16, 16)))
    with torch.no_grad():
        x = bb.forward_stages(frames, stop=layer).unflatten(0, (2, 3))  # (B, T, *F) entering the layer
        out = rl(x)
        trained = bb.stages[layer](x[:, 0])
        assert torch.allclose(out[:, 0], trained, atol=1e-5)
        state = rl.step(x[:, 0])[1][0]  # y_0
        a = rl.pre_activation(x[:, 0])[:, :rl.hidden_size]
        assert torch.allclose(state, t0_state(cell, a.flatten(2).mean(2)), atol=1e-5)
        assert not torch.allclose(out[:, 1], bb.stages[layer](x[:, 1]), atol=1e-4)  # the memory enters at t = 1


@pytest.mark.parametrize("cell,sih", [("vrnn", False), ("lstm", False), ("lstm", True), ("gru", False), ("gru", True)])
@pytest.mark.parametrize("backbone,layer", [("vgg_mini", "fc6"), ("resnet_mini", "layer3_1")])
def test_gradients_reach_inherited_and_hidden_weights(cell, sih, backbone, layer):
    torch.manual_seed(5)
    bb = prernn.create_backbone(backbone, 3, **({"input_size": 16} if backbone == "vgg_mini" else {}))
    m = prernn.convert(bb, [layer], cell, sih).train()
    m(torch.randn(2, 3, 3, 16, 16)).square().mean().backward()
    rl = m.recurrent_layers()[layer]
    inherited = rl.weight_ih if backbone == "vgg_mini" else rl.conv.weight
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

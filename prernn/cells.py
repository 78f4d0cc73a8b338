"""The hidden-to-hidden part of every recurrent layer: Eqs. (1)-(3), (5), (8)/(9), (11)/(12).

A layer first computes its input-to-hidden state for all time steps in one batched op:
gate-dependent ``u`` (B, T, G*H) (Eq. 7) or the single input-to-hidden state ``v`` (B, T, H) (Eq. 10,
also the VRNN case, Eq. 5/6). ``Recurrence`` then adds ``W_hh h_{t-1} + b_hh`` per gate and applies the
cell. Stacked gate order follows torch: LSTM (i, f, c~, o), GRU (r, z, h~).

Three paths; tests check they agree:
- ``step`` / ``run_reference``: the step-by-step reference, one line per equation (``SequenceModel.step``,
  gate statistics).
- ``run_fused(x, W_ih, b_ih)``: the forms a torch module computes exactly (``torch_form``), on ``nn.LSTM``
  (gate-dependent LSTM, Eqs. 7/8), ``nn.RNN`` (VRNN, Eq. 5) and ``nn.GRU`` (gate-dependent GRU with the reset
  applied after W_hh, z rows negated): modules without weights of their own that run with ours, the inherited
  W_ih as their weight_ih, so the kernel projects every time step at once.
- ``run(u)``: any form over a precomputed u / v (B, T, P): what torch has no module for (the Eq. (3)/(9)/(12)
  GRU with the reset before W_hh, SIH Eqs. (11)/(12)) and the conv case (Eqs. 6, 7/10 conv), whose u comes
  from a convolution. ``_RecurrenceLoop``: one addmm per step (two for the Eq. 3 GRU) and a hand-written
  backward through time whose weight gradients are one batched matmul over all steps.
"""
from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

CELLS = ("vrnn", "lstm", "gru")
NUM_GATES = {"vrnn": 1, "lstm": 4, "gru": 3}
GATE_NAMES = {"vrnn": (), "lstm": ("input", "forget", "output"), "gru": ("reset", "update")}
GATED_CELLS = tuple(c for c in CELLS if GATE_NAMES[c])  # ("lstm", "gru"): the cells SIH applies to
HH_INITS = ("orthogonal", "xavier", "normal")
GRU_RESETS = ("before", "after")
ACTIVATIONS = ("relu", "tanh")


def check_choice(what: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {list(allowed)}")


def sih_applies(cell: str) -> bool:
    """SIH binds every gate to one shared input-to-hidden state ([0052]-[0053]): a cell without gates has none to
    bind. The one statement of that rule (check_sih, the search space and Table 1 ask it)."""
    return cell in GATED_CELLS


def check_sih(cell: str, sih: bool) -> None:
    """ValueError when `sih` is asked of a cell it does not apply to (`sih_applies`)."""
    if sih and not sih_applies(cell):
        raise ValueError(f"sih=True needs a gated cell; expected cell in {list(GATED_CELLS)} (VRNN has no gates)")


def init_hidden_weight(weight: torch.Tensor, scheme: str, hidden: int) -> None:
    """Initialise each gate's (H, H) block of W_hh: orthogonal | xavier (uniform) | normal (std 1/sqrt(H))."""
    check_choice("hh_init", scheme, HH_INITS)
    if weight.is_meta:
        return
    with torch.no_grad():
        for block in weight.split(hidden, 0):
            if scheme == "orthogonal":
                nn.init.orthogonal_(block)
            elif scheme == "xavier":
                nn.init.xavier_uniform_(block)
            else:
                nn.init.normal_(block, 0.0, 1.0 / math.sqrt(hidden))


# ---- the fast path over precomputed inputs: forward and backward through time per cell --------------------------
# Each *_forward(u (B, T, P), w_hh (G*H, H), b_hh (G*H), ...) -> (h (B, T, H), tensors for the backward); each
# *_backward(grad_h (B, T, H), w_hh, h, *saved, ...) -> (d_u (B, T, P), d_w_hh, d_b_hh). All from a zero state.

def _shifted(seq: torch.Tensor) -> torch.Tensor:
    """(B, T, H) -> (B, T, H) of the previous step's values, zeros at t = 0."""
    return torch.cat([torch.zeros_like(seq[:, :1]), seq[:, :-1]], 1)


def _hidden_grads(d_pre: torch.Tensor, out: torch.Tensor):
    """d_pre (B, T, G*H), the gradients of W_hh h_{t-1} + b_hh per gate -> (dW_hh (G*H, H), db_hh (G*H))."""
    B, T, H = out.shape
    d_pre2 = d_pre.reshape(B * T, -1)
    return d_pre2.t() @ _shifted(out).reshape(B * T, H), d_pre2.sum(0)


def _vrnn_forward(u, w_hh, b_hh, relu: bool):
    """Eq. (1)/(5)/(6): h_t = H(u_t + W_hh h_{t-1} + b_hh), H = relu | tanh."""
    B, T, H = u.shape
    out = u.new_empty(B, T, H)
    h = u.new_zeros(B, H)
    for t in range(T):
        a = torch.addmm(b_hh, h, w_hh.t()).add_(u[:, t])
        h = a.relu_() if relu else a.tanh_()
        out[:, t] = h
    return out, ()


def _vrnn_backward(grad, w_hh, out, relu: bool):
    """Backward through time of Eq. (1)/(5)/(6)."""
    B, T, H = out.shape
    slope = (out > 0).to(out.dtype) if relu else 1 - out * out  # (B, T, H) dH/da
    d_a = out.new_empty(B, T, H)
    dh = grad[:, T - 1]
    for t in range(T - 1, -1, -1):
        torch.mul(dh, slope[:, t], out=d_a[:, t])
        if t:
            dh = torch.addmm(grad[:, t - 1], d_a[:, t], w_hh)
    return (d_a, *_hidden_grads(d_a, out))


def _lstm_forward(u, w_hh, b_hh, sih: bool):
    """Eq. (2)/(8)/(11): gates = u_t (v_t for every gate under SIH) + W_hh h_{t-1} + b_hh; c_t, h_t as in Eq. (2)."""
    B, T = u.shape[:2]
    H = w_hh.size(1)
    acts = u.new_empty(B, T, 4 * H)  # sigm(i), sigm(f), tanh(c~), sigm(o)
    cells = u.new_empty(B, T, H)
    tanh_c = u.new_empty(B, T, H)
    out = u.new_empty(B, T, H)
    h = c = u.new_zeros(B, H)
    for t in range(T):
        gates = torch.addmm(b_hh, h, w_hh.t())  # (B, 4H)
        if sih:
            gates.view(B, 4, H).add_(u[:, t].unsqueeze(1))
        else:
            gates.add_(u[:, t])
        i, f, g, o = gates.chunk(4, 1)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        c = f * c + i * g
        tc = torch.tanh(c)
        h = o * tc
        acts[:, t] = torch.cat([i, f, g, o], 1)
        cells[:, t], tanh_c[:, t], out[:, t] = c, tc, h
    return out, (acts, cells, tanh_c)


def _lstm_backward(grad, w_hh, out, acts, cells, tanh_c, sih: bool):
    """Backward through time of Eq. (2)/(8)/(11); under SIH the four gates' gradients sum into d v_t."""
    B, T, H = out.shape
    i, f, g, o = acts.chunk(4, 2)
    # d pre-activation = (dc, dc, dc, dh) * factor, per gate, every step at once
    factor = torch.cat([g * i * (1 - i), _shifted(cells) * f * (1 - f), i * (1 - g * g),
                        tanh_c * o * (1 - o)], 2).view(B, T, 4, H)
    dc_dh = o * (1 - tanh_c * tanh_c)  # (B, T, H)
    d_pre = out.new_empty(B, T, 4 * H)
    dh, dc = grad[:, T - 1], torch.zeros_like(out[:, 0])
    for t in range(T - 1, -1, -1):
        dc = torch.addcmul(dc, dh, dc_dh[:, t])
        d = d_pre[:, t].view(B, 4, H)
        torch.mul(dc.unsqueeze(1), factor[:, t, :3], out=d[:, :3])
        torch.mul(dh, factor[:, t, 3], out=d[:, 3])
        if t:
            dc = dc * f[:, t]
            dh = torch.addmm(grad[:, t - 1], d_pre[:, t], w_hh)
    return (d_pre.view(B, T, 4, H).sum(2) if sih else d_pre, *_hidden_grads(d_pre, out))


def _gru_before_forward(u, w_hh, b_hh, sih: bool):
    """Eq. (3)/(9)/(12), reset before W_hh: h~_t = tanh(u_t(h) + W_hh (r_t * h_{t-1}) + b); h_t = (1 - z) h + z h~."""
    B, T = u.shape[:2]
    H = w_hh.size(1)
    w_rz, w_n = w_hh[:2 * H], w_hh[2 * H:]
    if sih:  # v_t shared by the three gates (Eq. 12)
        a_rz = u.repeat(1, 1, 2) + b_hh[:2 * H]  # (B, T, 2H)
        a_n = u + b_hh[2 * H:]  # (B, T, H)
    else:
        a_rz = u[..., :2 * H] + b_hh[:2 * H]
        a_n = u[..., 2 * H:] + b_hh[2 * H:]
    rz = u.new_empty(B, T, 2 * H)
    rh = u.new_empty(B, T, H)
    n = u.new_empty(B, T, H)
    out = u.new_empty(B, T, H)
    h = u.new_zeros(B, H)
    for t in range(T):
        gr = torch.addmm(a_rz[:, t], h, w_rz.t()).sigmoid_()  # (B, 2H): r, z
        rz[:, t] = gr
        rh_t = gr[:, :H] * h
        rh[:, t] = rh_t
        n_t = torch.addmm(a_n[:, t], rh_t, w_n.t()).tanh_()
        n[:, t] = n_t
        h = torch.lerp(h, n_t, gr[:, H:])  # (1 - z) h + z h~
        out[:, t] = h
    return out, (rz, rh, n)


def _gru_before_backward(grad, w_hh, out, rz, rh, n, sih: bool):
    """Backward through time of Eq. (3)/(9)/(12); dW_hh of the h~ row from r_t * h_{t-1}."""
    B, T, H = out.shape
    w_rz, w_n = w_hh[:2 * H], w_hh[2 * H:]
    hprev = _shifted(out)
    d_rz = out.new_empty(B, T, 2 * H)  # gradients of the r, z pre-activations
    d_n = out.new_empty(B, T, H)  # gradient of the h~ pre-activation
    dh = torch.zeros_like(out[:, 0])
    for t in range(T - 1, -1, -1):
        dh = dh + grad[:, t]
        hp, r, z, n_t = hprev[:, t], rz[:, t, :H], rz[:, t, H:], n[:, t]
        da = dh * z * (1 - n_t * n_t)  # (B, H)
        d_n[:, t] = da
        drh = da @ w_n  # (B, H)
        d_rz[:, t, :H] = drh * hp * r * (1 - r)
        d_rz[:, t, H:] = dh * (n_t - hp) * z * (1 - z)
        dh = dh * (1 - z) + drh * r + d_rz[:, t] @ w_rz
    d_rz2, d_n2 = d_rz.reshape(B * T, 2 * H), d_n.reshape(B * T, H)
    d_w = torch.cat([d_rz2.t() @ hprev.reshape(B * T, H), d_n2.t() @ rh.reshape(B * T, H)], 0)  # (3H, H)
    d_b = torch.cat([d_rz2.sum(0), d_n2.sum(0)])
    d_u = d_rz[..., :H] + d_rz[..., H:] + d_n if sih else torch.cat([d_rz, d_n], 2)
    return d_u, d_w, d_b


def _gru_after_forward(u, w_hh, b_hh, sih: bool):
    """torch's GRU form, reset after W_hh: h~_t = tanh(u_t(h) + r_t * (W_hh h_{t-1} + b)); update as Eq. (3)."""
    B, T = u.shape[:2]
    H = w_hh.size(1)
    rz = u.new_empty(B, T, 2 * H)
    hn = u.new_empty(B, T, H)  # W_hh h + b of the h~ row
    n = u.new_empty(B, T, H)
    out = u.new_empty(B, T, H)
    h = u.new_zeros(B, H)
    for t in range(T):
        hh = torch.addmm(b_hh, h, w_hh.t())  # (B, 3H)
        ut = u[:, t]
        gr = (hh[:, :2 * H] + (ut.repeat(1, 2) if sih else ut[:, :2 * H])).sigmoid_()  # r, z
        n_t = torch.addcmul(ut if sih else ut[:, 2 * H:], gr[:, :H], hh[:, 2 * H:]).tanh_()
        h = torch.lerp(h, n_t, gr[:, H:])
        rz[:, t], hn[:, t], n[:, t], out[:, t] = gr, hh[:, 2 * H:], n_t, h
    return out, (rz, hn, n)


def _gru_after_backward(grad, w_hh, out, rz, hn, n, sih: bool):
    """Backward through time of the reset-after GRU."""
    B, T, H = out.shape
    r, z = rz[..., :H], rz[..., H:]
    hprev = _shifted(out)
    dn_dh = z * (1 - n * n)  # d(h~ pre-activation) / dh, (B, T, H)
    dz_dh = (n - hprev) * z * (1 - z)
    dr_dn = hn * r * (1 - r)
    keep = 1 - z
    d_pre = out.new_empty(B, T, 3 * H)  # r, z and the h~ row's W_hh h + b
    d_n = out.new_empty(B, T, H)  # h~ pre-activation
    dh = grad[:, T - 1]
    for t in range(T - 1, -1, -1):
        torch.mul(dh, dn_dh[:, t], out=d_n[:, t])
        torch.mul(d_n[:, t], dr_dn[:, t], out=d_pre[:, t, :H])
        torch.mul(dh, dz_dh[:, t], out=d_pre[:, t, H:2 * H])
        torch.mul(d_n[:, t], r[:, t], out=d_pre[:, t, 2 * H:])
        if t:
            dh = torch.addmm(torch.addcmul(grad[:, t - 1], dh, keep[:, t]), d_pre[:, t], w_hh)
    d_u = d_pre[..., :H] + d_pre[..., H:2 * H] + d_n if sih else torch.cat([d_pre[..., :2 * H], d_n], 2)
    return (d_u, *_hidden_grads(d_pre, out))


def _no_autocast(device_type: str):
    """Autocast off where the device has it (the loop runs in the weights' dtype); a no-op elsewhere (meta)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


class _RecurrenceLoop(torch.autograd.Function):
    """The recurrence over precomputed inputs with a hand-written backward through time.

    forward(u (B, T, P), W_hh (G*H, H), b_hh (G*H), form) -> (B, T, H) from a zero state, form = (cell, sih,
    relu, reset_after). Forward: one addmm per step (two for the Eq. 3 GRU), the activations saved. Backward:
    the recurrence in reverse, one (B, G*H) x (G*H, H) matmul per step; dW_hh and db_hh for all steps at once
    at the end (autograd over a python loop records ~10 nodes and one small weight-gradient matmul per step).
    Under autocast u is cast to the weights' dtype and the loop runs with autocast off.
    """

    @staticmethod
    def forward(ctx, u, w_hh, b_hh, form):
        cell, sih, relu, reset_after = form
        ctx.form, ctx.u_dtype = form, u.dtype
        with _no_autocast(u.device.type):
            u = u.to(w_hh.dtype)
            if cell == "vrnn":
                out, saved = _vrnn_forward(u, w_hh, b_hh, relu)
            elif cell == "lstm":
                out, saved = _lstm_forward(u, w_hh, b_hh, sih)
            elif reset_after:
                out, saved = _gru_after_forward(u, w_hh, b_hh, sih)
            else:
                out, saved = _gru_before_forward(u, w_hh, b_hh, sih)
        ctx.save_for_backward(w_hh, out, *saved)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        w_hh, out, *saved = ctx.saved_tensors
        cell, sih, relu, reset_after = ctx.form
        with _no_autocast(out.device.type):
            grad = grad_out.to(out.dtype).contiguous()
            if cell == "vrnn":
                d_u, d_w, d_b = _vrnn_backward(grad, w_hh, out, relu)
            elif cell == "lstm":
                d_u, d_w, d_b = _lstm_backward(grad, w_hh, out, *saved, sih)
            elif reset_after:
                d_u, d_w, d_b = _gru_after_backward(grad, w_hh, out, *saved, sih)
            else:
                d_u, d_w, d_b = _gru_before_backward(grad, w_hh, out, *saved, sih)
        return d_u.to(ctx.u_dtype), d_w, d_b, None


class Recurrence(nn.Module):
    """Hidden-to-hidden weights W_hh (G*H, H) (random, ``hh_init``) and biases b_hh (G*H) (zero).

    cell: vrnn (Eq. 1/5/6, activation ``activation``), lstm (Eq. 2/8/11), gru (Eq. 3/9/12, reset applied
    before the hidden product W_hh (r * h) as written in Eq. 3, or ``gru_reset="after"``: r * (W_hh h + b),
    the torch.nn.GRU / cuDNN form). Update always h_t = (1 - z) h_{t-1} + z h~_t (Eq. 3).
    sih: the input is the single state v_t (B, H) shared by all gates (Eqs. 11, 12).
    """

    def __init__(self, cell: str, hidden_size: int, *, sih: bool = False, activation: str = "tanh",
                 gru_reset: str = "before", hh_init: str = "orthogonal"):
        super().__init__()
        check_choice("cell", cell, CELLS)
        check_choice("gru_reset", gru_reset, GRU_RESETS)
        check_choice("hh_init", hh_init, HH_INITS)
        if cell == "vrnn":
            check_choice("activation", activation, ACTIVATIONS)
        check_sih(cell, sih)
        self.cell, self.hidden_size, self.sih = cell, int(hidden_size), bool(sih)
        self.activation, self.gru_reset = activation, gru_reset
        G, H = NUM_GATES[cell], self.hidden_size
        self.weight_hh = nn.Parameter(torch.empty(G * H, H))
        self.bias_hh = nn.Parameter(torch.zeros(G * H))
        init_hidden_weight(self.weight_hh, hh_init, H)
        self._torch_rnns: dict = {}  # input width D -> parameter-less (meta) nn.LSTM / RNN / GRU (run_fused)
        self._z_signs: dict = {}  # (device, dtype) -> (3H, 1) sign column (run_fused, GRU)

    @property
    def input_size(self) -> int:
        """Width P of the input-to-hidden state this recurrence consumes."""
        return self.hidden_size if (self.sih or self.cell == "vrnn") else NUM_GATES[self.cell] * self.hidden_size

    @property
    def torch_form(self) -> bool:
        """Whether a torch module computes this form exactly (``run_fused``): gate-dependent LSTM, VRNN and
        gate-dependent GRU with the reset after W_hh. Not the Eq. (3) GRU (reset before) nor SIH (Eqs. 11/12)."""
        return self.cell == "vrnn" or (not self.sih and (self.cell == "lstm" or self.gru_reset == "after"))

    def zero_state(self, batch: int, like: torch.Tensor):
        h = like.new_zeros(batch, self.hidden_size)
        return (h, h.clone()) if self.cell == "lstm" else (h,)

    # ---- reference path -------------------------------------------------------------------------
    def step(self, u_t: torch.Tensor, state=None):
        """One time step. u_t (B, P) -> (h_t (B, H), new state tuple, {gate: (B, H)})."""
        B, H = u_t.shape[0], self.hidden_size
        if state is None:
            state = self.zero_state(B, u_t)
        h = state[0]
        G = NUM_GATES[self.cell]
        us = [u_t] * G if self.sih else list(u_t.split(H, 1))
        w = self.weight_hh.split(H, 0)
        b = self.bias_hh.split(H, 0)
        if self.cell == "vrnn":
            a = us[0] + h @ w[0].t() + b[0]
            h = torch.relu(a) if self.activation == "relu" else torch.tanh(a)
            return h, (h,), {}
        if self.cell == "lstm":
            c = state[1]
            i = torch.sigmoid(us[0] + h @ w[0].t() + b[0])
            f = torch.sigmoid(us[1] + h @ w[1].t() + b[1])
            g = torch.tanh(us[2] + h @ w[2].t() + b[2])
            o = torch.sigmoid(us[3] + h @ w[3].t() + b[3])
            c = f * c + i * g
            h = o * torch.tanh(c)
            return h, (h, c), {"input": i, "forget": f, "output": o}
        r = torch.sigmoid(us[0] + h @ w[0].t() + b[0])
        z = torch.sigmoid(us[1] + h @ w[1].t() + b[1])
        if self.gru_reset == "before":
            n = torch.tanh(us[2] + (r * h) @ w[2].t() + b[2])
        else:
            n = torch.tanh(us[2] + r * (h @ w[2].t() + b[2]))
        h = (1 - z) * h + z * n
        return h, (h,), {"reset": r, "update": z}

    def run_reference(self, u: torch.Tensor, record: bool = False):
        """Loop of ``step`` from a zero state. u (B, T, P) -> ((B, T, H), {gate: (B, T, H)})."""
        state, outs, gates = None, [], {}
        for t in range(u.shape[1]):
            h, state, g = self.step(u[:, t], state)
            outs.append(h)
            if record:
                for k, v in g.items():
                    gates.setdefault(k, []).append(v)
        return torch.stack(outs, 1), {k: torch.stack(v, 1) for k, v in gates.items()}

    # ---- torch modules, W_ih folded in ----------------------------------------------------------
    def run_fused(self, x: torch.Tensor, weight_ih: torch.Tensor, bias_ih: torch.Tensor) -> torch.Tensor:
        """x (B, T, D), W_ih (G*H, D), b_ih (G*H) -> (B, T, H) from a zero state on torch's module.

        Only for ``torch_form``: nn.LSTM (Eqs. 7/8), nn.RNN (Eq. 5) or nn.GRU (reset after W_hh) run with our
        weights (assigned to the module, or for other tensors through ``torch.func.functional_call``); the module
        computes W_ih x for all time steps at once.
        """
        if not self.torch_form:
            raise ValueError(f"run_fused supports cell in ['lstm', 'vrnn'] and gru with gru_reset='after', without "
                             f"sih; got cell={self.cell!r} (gru_reset={self.gru_reset!r}, sih={self.sih})")
        w_ih, w_hh, b_ih, b_hh = weight_ih, self.weight_hh, bias_ih, self.bias_hh
        if self.cell == "gru":
            # torch's GRU is h' = (1 - z') h~ + z' h; with the z rows negated z' = 1 - z, i.e. Eq. (3)'s update
            sign = self._z_sign(x)  # (3H, 1): +1 (r), -1 (z), +1 (h~)
            w_ih, w_hh, b_ih, b_hh = w_ih * sign, w_hh * sign, b_ih * sign[:, 0], b_hh * sign[:, 0]
        rnn = self._torch_rnn(x)
        if rnn.training != self.training:
            rnn.train(self.training)
        weights = {"weight_ih_l0": w_ih, "weight_hh_l0": w_hh, "bias_ih_l0": b_ih, "bias_hh_l0": b_hh}
        # A torch RNN module keeps the weights it last ran with (and on CUDA compacts them into one cuDNN buffer
        # when they are new to it). Our parameters (LSTM, VRNN) are assigned to it and kept: no swap per call, and
        # CUDA compacts them once. Other tensors go in through functional_call for the call.
        if all(isinstance(w, nn.Parameter) for w in weights.values()):
            for name, w in weights.items():
                if getattr(rnn, name) is not w:
                    setattr(rnn, name, w)
            return rnn(x)[0]
        out = torch.func.functional_call(rnn, weights, (x,))[0]
        if self.cell == "gru":  # new sign-flipped copies every call: re-assigning its own weights lets go of them
            for name, own in list(rnn.named_parameters()):
                setattr(rnn, name, own)
        return out

    def _torch_rnn(self, x: torch.Tensor) -> nn.RNNBase:
        """The torch module of this form for inputs x (B, T, D), built once per D on the meta device: no weights
        of its own, and not a submodule (neither it nor what it holds is in the state dict)."""
        D = x.shape[-1]
        if D not in self._torch_rnns:
            H, kw = self.hidden_size, {"batch_first": True, "device": "meta"}
            if self.cell == "lstm":
                self._torch_rnns[D] = nn.LSTM(D, H, **kw)
            elif self.cell == "gru":
                self._torch_rnns[D] = nn.GRU(D, H, **kw)
            else:
                self._torch_rnns[D] = nn.RNN(D, H, nonlinearity=self.activation, **kw)
        return self._torch_rnns[D]

    def _apply(self, fn, recurse=True):
        """.to() / .cuda() / .double() ...: the torch modules are built again at the next call, so that on CUDA
        they compact the moved weights once more (as ``nn.RNNBase._apply`` does for its own)."""
        self._torch_rnns.clear()
        return super()._apply(fn, recurse)

    def _z_sign(self, like: torch.Tensor) -> torch.Tensor:
        key = (like.device, like.dtype)
        if key not in self._z_signs:
            H = self.hidden_size
            sign = torch.ones(3 * H, 1, device=like.device, dtype=like.dtype)
            sign[H:2 * H] = -1
            self._z_signs[key] = sign
        return self._z_signs[key]

    # ---- fast path over precomputed inputs --------------------------------------------------------
    def run(self, u: torch.Tensor) -> torch.Tensor:
        """Precomputed input-to-hidden states u / v (B, T, P) -> (B, T, H) from a zero state (``_RecurrenceLoop``).

        Every form: the Eq. (3)/(9)/(12) GRU and SIH (Eqs. 11/12), which no torch module computes, and the conv
        case, whose u a convolution computed (a torch module would need an identity input map, an extra
        (B*T, G*H) x (G*H, G*H) matmul).
        """
        form = (self.cell, self.sih, self.activation == "relu", self.gru_reset == "after")
        return _RecurrenceLoop.apply(u, self.weight_hh, self.bias_hh, form)

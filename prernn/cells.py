"""The hidden-to-hidden part of every recurrent layer: Eqs. (1)-(3), (5), (8)/(9), (11)/(12).

A layer first computes its input-to-hidden state for all time steps in one batched op:
gate-dependent ``u`` (B, T, G*H) (Eq. 7) or the single input-to-hidden state ``v`` (B, T, H) (Eq. 10,
also the VRNN case, Eq. 5/6). ``Recurrence`` then adds ``W_hh h_{t-1} + b_hh`` per gate and applies the
cell. Stacked gate order follows torch: LSTM (i, f, c~, o), GRU (r, z, h~).

Two paths: ``step`` (the step-by-step reference, used by ``SequenceModel.step`` and gate statistics)
and ``run`` / ``run_fused`` (fast: torch's fused ``_VF.lstm`` / ``_VF.rnn_relu`` / ``_VF.rnn_tanh`` kernels with
the inherited W_ih folded in, and ``_VF.gru`` for the gate-dependent reset-after GRU with its z rows negated; for
precomputed u / v on CUDA the same kernels with an identity input map, on CPU a one-addmm-per-step loop; the Eq. (3)
GRU in a TorchScript loop on CUDA, on CPU a loop with a hand-written backward). Tests check they agree.
"""
from __future__ import annotations

import math
import warnings

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


def check_sih(cell: str, sih: bool) -> None:
    """SIH binds every gate to one shared input-to-hidden state ([0052]-[0053]): a cell without gates has none to bind."""
    if sih and cell not in GATED_CELLS:
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


def _gru_loop(u: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor, h: torch.Tensor,
              sih: bool, reset_after: bool) -> torch.Tensor:
    """Eq. (3)/(9)/(12) GRU over (B, T, P) inputs from state h (B, H); returns (B, T, H)."""
    H = h.size(1)
    outs = []
    for t in range(u.size(1)):
        ut = u[:, t]
        if sih:
            ur, uz, un = ut, ut, ut
        else:
            ur, uz, un = ut[:, :H], ut[:, H:2 * H], ut[:, 2 * H:]
        if reset_after:
            hh = torch.addmm(b_hh, h, w_hh.t())  # (B, 3H)
            r = torch.sigmoid(ur + hh[:, :H])
            z = torch.sigmoid(uz + hh[:, H:2 * H])
            n = torch.tanh(un + r * hh[:, 2 * H:])
        else:
            hh = torch.addmm(b_hh[:2 * H], h, w_hh[:2 * H].t())  # (B, 2H)
            r = torch.sigmoid(ur + hh[:, :H])
            z = torch.sigmoid(uz + hh[:, H:])
            n = torch.tanh(un + torch.addmm(b_hh[2 * H:], r * h, w_hh[2 * H:].t()))
        h = (1.0 - z) * h + z * n
        outs.append(h)
    return torch.stack(outs, 1)


def _lstm_loop(u: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor, h: torch.Tensor, sih: bool) -> torch.Tensor:
    """Eq. (2)/(8)/(11) LSTM over (B, T, P) precomputed inputs, one addmm per step; returns (B, T, H)."""
    c = torch.zeros_like(h)
    outs = []
    for t in range(u.size(1)):
        ut = u[:, t]
        gates = torch.addmm(b_hh, h, w_hh.t())  # (B, 4H)
        gates = gates + (ut.repeat(1, 4) if sih else ut)
        i, f, g, o = gates.chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outs.append(h)
    return torch.stack(outs, 1)


def _rnn_loop(u: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor, h: torch.Tensor, relu: bool) -> torch.Tensor:
    """Eq. (1)/(5)/(6) VRNN over (B, T, H) precomputed inputs; returns (B, T, H)."""
    outs = []
    for t in range(u.size(1)):
        a = torch.addmm(b_hh, h, w_hh.t()) + u[:, t]
        h = torch.relu(a) if relu else torch.tanh(a)
        outs.append(h)
    return torch.stack(outs, 1)


with warnings.catch_warnings():  # torch.jit.script is deprecated in torch 2.x; used for the GRU loop on CUDA
    warnings.simplefilter("ignore", DeprecationWarning)
    _gru_loop_jit = torch.jit.script(_gru_loop)


class _GRUBeforeFn(torch.autograd.Function):
    """Eq. (3)/(9)/(12) GRU (reset before W_hh) with a hand-written backward through time.

    forward(u (B, T, P), W_hh (3H, H), b_hh (3H), h0 (B, H), sih) -> (B, T, H). One addmm per gate group and
    step (r, z together; then h~), in-place activations; the backward runs the recurrence in reverse with
    two small matmuls per step and computes dW_hh / db_hh for all steps in one batched matmul at the end
    (autograd over the python loop would record ~10 nodes per step and T small weight-gradient matmuls).
    """

    @staticmethod
    def forward(ctx, u, w_hh, b_hh, h0, sih: bool):
        ctx.u_dtype = u.dtype  # under autocast u may be bf16/fp16: run in the weights' dtype, autocast off
        if u.device.type not in ("cpu", "cuda"):  # e.g. meta tensors (shape checks)
            return _GRUBeforeFn._forward(ctx, u.to(w_hh.dtype), w_hh, b_hh, h0.to(w_hh.dtype), sih)
        with torch.autocast(u.device.type, enabled=False):
            return _GRUBeforeFn._forward(ctx, u.to(w_hh.dtype), w_hh, b_hh, h0.to(w_hh.dtype), sih)

    @staticmethod
    def _forward(ctx, u, w_hh, b_hh, h0, sih: bool):
        B, T = u.shape[:2]
        H = h0.size(1)
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
        h = h0
        for t in range(T):
            g = torch.addmm(a_rz[:, t], h, w_rz.t()).sigmoid_()  # (B, 2H): r, z
            rz[:, t] = g
            rh_t = g[:, :H] * h
            rh[:, t] = rh_t
            n_t = torch.addmm(a_n[:, t], rh_t, w_n.t()).tanh_()
            n[:, t] = n_t
            h = torch.lerp(h, n_t, g[:, H:])  # (1 - z) h + z h~
            out[:, t] = h
        ctx.sih = sih
        ctx.save_for_backward(w_hh, h0, out, rz, rh, n)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        w_hh, h0, out, rz, rh, n = ctx.saved_tensors
        B, T, H = out.shape
        w_rz, w_n = w_hh[:2 * H], w_hh[2 * H:]
        hprev = torch.cat([h0.unsqueeze(1), out[:, :-1]], 1)  # (B, T, H) h_{t-1}
        d_rz = out.new_empty(B, T, 2 * H)  # gradients of the r, z pre-activations
        d_n = out.new_empty(B, T, H)  # gradient of the h~ pre-activation
        dh = torch.zeros_like(h0)
        grad_out = grad_out.to(out.dtype).contiguous()
        for t in range(T - 1, -1, -1):
            dh = dh + grad_out[:, t]
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
        if ctx.sih:
            d_u = d_rz[..., :H] + d_rz[..., H:] + d_n
        else:
            d_u = torch.cat([d_rz, d_n], 2)
        return d_u.to(ctx.u_dtype), d_w, d_b, dh, None


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
        self._eye: dict = {}

    @property
    def input_size(self) -> int:
        """Width P of the input-to-hidden state this recurrence consumes."""
        return self.hidden_size if (self.sih or self.cell == "vrnn") else NUM_GATES[self.cell] * self.hidden_size

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

    # ---- fast path ------------------------------------------------------------------------------
    def _input_map(self, like: torch.Tensor) -> torch.Tensor:
        """Fixed identity input map (G*H, P) for precomputed u / v (not a parameter, cached per device)."""
        key = (like.device, like.dtype)
        if key not in self._eye:
            G, H = NUM_GATES[self.cell], self.hidden_size
            eye = torch.eye(self.input_size, device=like.device, dtype=like.dtype)
            self._eye[key] = eye.repeat(G, 1) if (self.sih and G > 1) else eye
        return self._eye[key]

    def run_fused(self, x: torch.Tensor, weight_ih: torch.Tensor, bias_ih: torch.Tensor) -> torch.Tensor:
        """Fused kernel with the input projection folded in: x (B, T, D), W_ih (G*H, D) -> (B, T, H).

        Only for gate-dependent LSTM, VRNN and reset-after GRU; the kernel computes W_ih x for all time steps at once.
        """
        B = x.shape[0]
        h0 = x.new_zeros(1, B, self.hidden_size)
        params = [weight_ih, self.weight_hh, bias_ih, self.bias_hh]
        if self.cell == "lstm":
            return torch._VF.lstm(x, (h0, h0), params, True, 1, 0.0, self.training, False, True)[0]
        if self.cell == "vrnn":
            fn = torch._VF.rnn_relu if self.activation == "relu" else torch._VF.rnn_tanh
            return fn(x, h0, params, True, 1, 0.0, self.training, False, True)[0]
        if self.cell == "gru" and self.gru_reset == "after":
            # torch's GRU is h' = (1 - z') h~ + z' h; with the z rows negated z' = 1 - z, i.e. Eq. (3)'s update
            sign = self._z_sign(x)  # (3H, 1): +1 (r), -1 (z), +1 (h~)
            params = [weight_ih * sign, self.weight_hh * sign, bias_ih * sign[:, 0], self.bias_hh * sign[:, 0]]
            return torch._VF.gru(x, h0, params, True, 1, 0.0, self.training, False, True)[0]
        raise ValueError(f"run_fused supports cell in ['lstm', 'vrnn'] and gru with gru_reset='after', "
                         f"got {self.cell!r} (gru_reset={self.gru_reset!r})")

    def _z_sign(self, like: torch.Tensor) -> torch.Tensor:
        key = ("zsign", like.device, like.dtype)
        if key not in self._eye:
            H = self.hidden_size
            sign = torch.ones(3 * H, 1, device=like.device, dtype=like.dtype)
            sign[H:2 * H] = -1
            self._eye[key] = sign
        return self._eye[key]

    def run(self, u: torch.Tensor, fused: bool | None = None) -> torch.Tensor:
        """Fast recurrence over precomputed input-to-hidden states u (B, T, P) from a zero state -> (B, T, H).

        CUDA: LSTM/VRNN on torch's fused kernels (cuDNN) with a fixed identity input map (the projection is
        already in u), GRU in a TorchScript loop. CPU: a plain loop with one addmm per step (measured faster
        on CPU than the identity-map kernels and than TorchScript); the Eq. (3) GRU (reset before) through
        ``_GRUBeforeFn`` (hand-written backward, batched weight gradients; bench.layers). ``fused`` forces one
        or the other (tests).
        """
        fused = u.is_cuda if fused is None else bool(fused)
        h0 = u.new_zeros(u.shape[0], self.hidden_size)
        if self.cell == "gru":
            if self.gru_reset == "before" and not fused:
                return _GRUBeforeFn.apply(u, self.weight_hh, self.bias_hh, h0, self.sih)
            fn = _gru_loop_jit if fused else _gru_loop
            return fn(u, self.weight_hh, self.bias_hh, h0, self.sih, self.gru_reset == "after")
        if fused:
            eye = self._input_map(u)
            return self.run_fused(u.contiguous(), eye, torch.zeros_like(self.bias_hh))
        if self.cell == "lstm":
            return _lstm_loop(u, self.weight_hh, self.bias_hh, h0, self.sih)
        return _rnn_loop(u, self.weight_hh, self.bias_hh, h0, self.activation == "relu")

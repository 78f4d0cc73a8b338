"""The hidden-to-hidden part of every recurrent layer: Eqs. (1)-(3), (5), (8)/(9), (11)/(12).

A layer first computes its input-to-hidden state for all time steps in one batched op:
gate-dependent ``u`` (B, T, G*H) (Eq. 7) or the single input-to-hidden state ``v`` (B, T, H) (Eq. 10,
also the VRNN case, Eq. 5/6). ``Recurrence`` then adds ``W_hh h_{t-1} + b_hh`` per gate and applies the
cell. Stacked gate order follows torch: LSTM (i, f, c~, o), GRU (r, z, h~).

Two paths: ``step`` (the step-by-step reference, used by ``SequenceModel.step`` and gate statistics)
and ``run`` / ``run_fused`` (fast: torch's fused ``_VF.lstm`` / ``_VF.rnn_relu`` / ``_VF.rnn_tanh`` kernels with
the inherited W_ih folded in; for precomputed u / v on CUDA the same kernels with an identity input map, on CPU a
one-addmm-per-step loop; the Eq. (3) GRU in a TorchScript loop on CUDA). Tests check they agree.
"""
from __future__ import annotations

import math
import warnings

import torch
from torch import nn

CELLS = ("vrnn", "lstm", "gru")
NUM_GATES = {"vrnn": 1, "lstm": 4, "gru": 3}
GATE_NAMES = {"vrnn": (), "lstm": ("input", "forget", "output"), "gru": ("reset", "update")}
HH_INITS = ("orthogonal", "xavier", "normal")
GRU_RESETS = ("before", "after")
ACTIVATIONS = ("relu", "tanh")


def check_choice(what: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {list(allowed)}")


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
        if sih and cell == "vrnn":
            raise ValueError("sih=True needs a gated cell; expected cell in ['lstm', 'gru'] (VRNN has no gates)")
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

        Only for gate-dependent LSTM and VRNN; the kernel computes W_ih x for all time steps at once.
        """
        B = x.shape[0]
        h0 = x.new_zeros(1, B, self.hidden_size)
        params = [weight_ih, self.weight_hh, bias_ih, self.bias_hh]
        if self.cell == "lstm":
            return torch._VF.lstm(x, (h0, h0), params, True, 1, 0.0, self.training, False, True)[0]
        if self.cell == "vrnn":
            fn = torch._VF.rnn_relu if self.activation == "relu" else torch._VF.rnn_tanh
            return fn(x, h0, params, True, 1, 0.0, self.training, False, True)[0]
        raise ValueError(f"run_fused supports cell in ['lstm', 'vrnn'], got {self.cell!r}")

    def run(self, u: torch.Tensor, fused: bool | None = None) -> torch.Tensor:
        """Fast recurrence over precomputed input-to-hidden states u (B, T, P) from a zero state -> (B, T, H).

        CUDA: LSTM/VRNN on torch's fused kernels (cuDNN) with a fixed identity input map (the projection is
        already in u), GRU in a TorchScript loop. CPU: a plain loop with one addmm per step (measured faster
        on CPU than the identity-map kernels and than TorchScript). ``fused`` forces one or the other (tests).
        """
        fused = u.is_cuda if fused is None else bool(fused)
        h0 = u.new_zeros(u.shape[0], self.hidden_size)
        if self.cell == "gru":
            fn = _gru_loop_jit if fused else _gru_loop
            return fn(u, self.weight_hh, self.bias_hh, h0, self.sih, self.gru_reset == "after")
        if fused:
            eye = self._input_map(u)
            return self.run_fused(u.contiguous(), eye, torch.zeros_like(self.bias_hh))
        if self.cell == "lstm":
            return _lstm_loop(u, self.weight_hh, self.bias_hh, h0, self.sih)
        return _rnn_loop(u, self.weight_hh, self.bias_hh, h0, self.activation == "relu")

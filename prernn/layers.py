"""Recurrent layers that replace a trained non-recurrent layer (PreRNN), plus the traditional RNN layer.

- ``FCRecurrent``: a fully connected layer made recurrent. VRNN: Eq. (5) y_t = H(W_xy x_t + b + W_hh y_{t-1})
  with H the replaced layer's own activation. Gate-dependent LSTM/GRU: Eqs. (7)-(9), the stacked
  ``weight_ih`` (G*H, D) / ``bias_ih`` start as G copies of the trained W_xy / b and are fine-tuned separately.
  SIH: Eqs. (10)-(12), ``weight_ih`` (H, D) is the trained layer itself, v_t = W_xy x_t + b shared by all gates.
  With ``inherited=False`` it is the traditional, randomly initialised RNN layer of FIG. 1C/1D (Eqs. 1-3).
- ``ConvRecurrent``: a conv layer made recurrent, Eq. (6) / Eq. (7)/(10) conv case: a ResNet residual block or a
  VGG / C3D conv layer; u_t = P(B(W_xy * x_t) + gamma_t) with the trained running statistics, then the recurrence
  over the pooled vector. Gate-dependent: W_xy / B are stacked G copies (one batched conv). Where the layer above
  takes a spatial map, the trained layer's map plus the recurrent state's change goes up (see the class).

Every layer maps (B, T, *F) -> (B, T, H) from a zero state (``forward``, fast path; a conv layer feeding a map:
(B, T, C, *S)), and offers ``step(x_t, state)`` and ``forward_reference(x, record)`` (the step-by-step reference
path).
Output dropout (where the replaced layer had one) is applied to y_t after the recurrence.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from .cells import NUM_GATES, Recurrence


class _RecurrentLayer(nn.Module):
    """Shared forward/step logic. Subclasses define ``project(x (N, *F)) -> (N, P)`` and ``forward``."""

    recurrence: Recurrence

    @property
    def cell(self) -> str:
        return self.recurrence.cell

    @property
    def sih(self) -> bool:
        return self.recurrence.sih

    @property
    def hidden_size(self) -> int:
        return self.recurrence.hidden_size

    def project(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _project_seq(self, x: torch.Tensor) -> torch.Tensor:
        B, T = x.shape[:2]
        return self.project(x.flatten(0, 1)).unflatten(0, (B, T))  # (B, T, P)

    def step(self, x_t: torch.Tensor, state=None):
        """x_t (B, *F) -> (y_t (B, H), state). Reference path; matches ``forward`` over a clip."""
        h, state, _ = self.recurrence.step(self.project(x_t), state)
        return self.dropout(h), state

    def forward_reference(self, x: torch.Tensor, record: bool = False):
        """Step-by-step path: x (B, T, *F) -> ((B, T, H), {gate: (B, T, H)} when record)."""
        out, gates = self.recurrence.run_reference(self._project_seq(x), record)
        return self.dropout(out), gates

    def new_parameters(self):
        """Parameters trained from scratch (hidden-to-hidden; traditional layers: all)."""
        if getattr(self, "inherited", True):
            return list(self.recurrence.parameters())
        return list(self.parameters())

    def inherited_parameters(self):
        new = {id(p) for p in self.new_parameters()}
        return [p for p in self.parameters() if id(p) not in new]

    def recurrent_parameter_count(self) -> int:
        """Parameters that making the layer recurrent adds beyond the trained layer.

        PreRNN: W_hh and b_hh, plus for gate-dependent cells the (G-1) extra copies of the inherited
        input weights and bias. Traditional: every parameter of the layer (W_ih, b_ih, W_hh, b_hh).
        """
        if not getattr(self, "inherited", True):
            return sum(p.numel() for p in self.parameters())
        n = sum(p.numel() for p in self.recurrence.parameters())
        G = NUM_GATES[self.cell]
        if not self.sih and G > 1:
            n += (G - 1) * sum(p.numel() for p in self.input_copy_parameters()) // G
        return n


class FCRecurrent(_RecurrentLayer):
    """A fully connected layer as a recurrent layer (Eqs. 5, 7-9, 10-12; traditional: Eqs. 1-3).

    Parameters: ``weight_ih`` (P, D), ``bias_ih`` (P) with P = G*H (gate-dependent) or H (VRNN, SIH);
    ``recurrence.weight_hh`` (G*H, H), ``recurrence.bias_hh`` (G*H).
    """

    def __init__(self, in_features: int, hidden_size: int, cell: str, *, sih: bool = False,
                 activation: str = "tanh", dropout: float = 0.0, gru_reset: str = "before",
                 hh_init: str = "orthogonal", inherited: bool = True):
        super().__init__()
        self.recurrence = Recurrence(cell, hidden_size, sih=sih, activation=activation,
                                     gru_reset=gru_reset, hh_init=hh_init)
        P = self.recurrence.input_size
        self.in_features = int(in_features)
        self.inherited = bool(inherited)
        self.weight_ih = nn.Parameter(torch.empty(P, in_features))
        self.bias_ih = nn.Parameter(torch.empty(P))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        if not inherited and not self.weight_ih.is_meta:  # torch-style uniform(-1/sqrt(H), 1/sqrt(H))
            k = 1.0 / math.sqrt(hidden_size)
            nn.init.uniform_(self.weight_ih, -k, k)
            nn.init.uniform_(self.bias_ih, -k, k)

    @classmethod
    def from_linear(cls, linear: nn.Linear, cell: str, **kw) -> "FCRecurrent":
        """Inherit a trained ``nn.Linear`` (W_xy (H, D), b (H)): copied into every gate (or once for SIH/VRNN)."""
        H, D = linear.weight.shape
        layer = cls(D, H, cell, inherited=True, **kw)
        reps = layer.weight_ih.shape[0] // H
        bias = linear.bias if linear.bias is not None else linear.weight.new_zeros(H)
        assert layer.weight_ih.shape == (reps * H, D), (layer.weight_ih.shape, linear.weight.shape)
        with torch.no_grad():
            layer.weight_ih.copy_(linear.weight.detach().repeat(reps, 1))
            layer.bias_ih.copy_(bias.detach().repeat(reps))
        return layer

    def input_copy_parameters(self):
        return [self.weight_ih, self.bias_ih]

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """(N, *F) -> (N, P): the input-to-hidden state u (Eq. 7) or v (Eq. 10)."""
        return F.linear(x.flatten(1), self.weight_ih, self.bias_ih)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, *F) -> (B, T, H) from a zero state (fast path)."""
        x = x.flatten(2)  # (B, T, D)
        rec = self.recurrence
        if rec.torch_form:  # gate-dependent LSTM, VRNN, reset-after GRU
            out = rec.run_fused(x.contiguous(), self.weight_ih, self.bias_ih)  # W_ih folded into torch's module
        else:
            out = rec.run(F.linear(x, self.weight_ih, self.bias_ih))  # u / v for all steps in one op
        return self.dropout(out)


def _bn_eval(x: torch.Tensor, bn: nn.Module) -> torch.Tensor:
    """Batch norm with the trained running statistics (Eq. 6's B), in training mode too. 2D or 3D maps."""
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


CONV_TYPES = (nn.Conv2d, nn.Conv3d)
BN_TYPES = (nn.BatchNorm2d, nn.BatchNorm3d)
MAP_COPY = {"vrnn": 0, "lstm": 2, "gru": 2}  # the gate copy of the candidate state (c~ / h~) in torch's stacking
OUTPUTS = ("state", "map")


def _stacked_conv(conv, reps: int):
    """``conv`` with its output channels repeated ``reps`` times (one batched conv for all gate copies)."""
    if conv.groups != 1:
        raise ValueError(f"a grouped conv (groups={conv.groups}) cannot be converted; expected groups=1")
    out = type(conv)(conv.in_channels, reps * conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                     conv.dilation, 1, conv.bias is not None, conv.padding_mode)
    with torch.no_grad():
        out.weight.copy_(conv.weight.detach().repeat(reps, *[1] * (conv.weight.dim() - 1)))
        if conv.bias is not None:
            out.bias.copy_(conv.bias.detach().repeat(reps))
    return out


def _stacked_bn(bn, reps: int):
    """``bn`` (weight, bias and the trained running statistics) repeated ``reps`` times."""
    out = type(bn)(reps * bn.num_features, eps=bn.eps, momentum=bn.momentum)
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(out, name).copy_(getattr(bn, name).detach().repeat(reps))
    return out


def _conv_parts(stage):
    """A convertible conv stage -> (block or None, conv, bn or None, the layers after its activation).

    Accepted: a ResNet ``BasicBlock`` (or an nn.Sequential holding only one), whose conv2 / bn2 are W_xy / B and
    whose residual is gamma_t; or a VGG / C3D conv stage ``nn.Sequential(conv, [bn,] ReLU, pools...)``.
    """
    if isinstance(stage, nn.Sequential) and len(stage) == 1 and hasattr(stage[0], "conv2"):
        stage = stage[0]
    if hasattr(stage, "conv2") and hasattr(stage, "bn2"):
        return stage, stage.conv2, stage.bn2, nn.Sequential()
    layers = list(stage) if isinstance(stage, nn.Sequential) else []
    if not layers or not isinstance(layers[0], CONV_TYPES):
        raise ValueError(f"cannot make a {type(stage).__name__} stage recurrent per Eq. (6); expected a residual "
                         "block or nn.Sequential(conv, [batch norm,] ReLU, ...)")
    bn = layers[1] if len(layers) > 1 and isinstance(layers[1], BN_TYPES) else None
    act = 2 if bn is not None else 1
    if len(layers) <= act or not isinstance(layers[act], nn.ReLU):
        raise ValueError(f"the conv stage's conv{' + batch norm' if bn is not None else ''} must be followed by a "
                         f"ReLU (Eq. 6's H), got {type(layers[act]).__name__ if len(layers) > act else 'nothing'}")
    return None, layers[0], bn, nn.Sequential(*copy.deepcopy(layers[act + 1:]))


class ConvRecurrent(_RecurrentLayer):
    """A trained conv layer made recurrent (Eq. 6; the conv cases of Eqs. 7 and 10).

    The stage is a ResNet residual block (conv1/bn1/ReLU and the shortcut are the block's own, inherited; its
    conv2/bn2 are W_xy and B; gamma_t is the shortcut) or a VGG / C3D conv stage (conv, batch norm where the net
    has one, ReLU, then its pools; no gamma). Per frame the pre-activation map a_t = B(W_xy * x_t) + gamma_t is
    computed with the trained running statistics (also while training), pooled globally, u_t = P(a_t) (Eq. 6/7/10:
    2D maps over H, W; 3D over L, H, W), and the recurrence runs over the pooled vectors: VRNN
    y_t = ReLU(u_t + W_hh y_{t-1} + b_hh) (Eq. 6, H = the layer's ReLU), LSTM / GRU Eqs. (8)/(9) (gate-dependent:
    W_xy, its bias and B stacked G times, one batched conv) or Eqs. (11)/(12) (SIH: one copy, shared v_t).

    ``output="state"`` (the layer absorbs the global pooling above it: a ResNet's last block): the output is
    y_t (B, T, C). ``output="map"`` (the layer above expects the spatial map): the output is the trained layer's
    own map plus the recurrent state's change, broadcast over every position, then the stage's own pools:
    out_t = pools(ReLU(a_t) + (y_t - y0_t)), y0_t = the same cell on u_t from a zero state (what the layer would
    say without memory). At t = 0, y_0 = y0_0, so the map is exactly the trained layer's output, for every cell and
    form; later steps add what the memory changes per channel. For gate-dependent cells a_t is the copy of the
    candidate state (LSTM c~, GRU h~), which is the trained layer's at conversion.
    """

    def __init__(self, stage, cell: str, *, sih: bool = False, gru_reset: str = "before",
                 hh_init: str = "orthogonal", output: str = "state"):
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"unknown output {output!r}; expected one of {list(OUTPUTS)}")
        block, conv, bn, after = _conv_parts(stage)
        C = conv.out_channels
        self.recurrence = Recurrence(cell, C, sih=sih, activation="relu", gru_reset=gru_reset, hh_init=hh_init)
        self.inherited = True
        self.reps = self.recurrence.input_size // C
        self.output = output
        self.residual = block is not None
        if self.residual:  # the block's own layers below W_xy and its shortcut (inherited)
            self.conv1 = copy.deepcopy(block.conv1)
            self.bn1 = copy.deepcopy(block.bn1)
            self.downsample = copy.deepcopy(block.downsample)
        self.conv = _stacked_conv(conv, self.reps)
        self.bn = _stacked_bn(bn, self.reps) if bn is not None else None
        self.after = after  # the stage's pools, applied to the map (output "map")
        self.map_copy = 0 if self.reps == 1 else MAP_COPY[cell]
        self.dropout = nn.Identity()

    def input_copy_parameters(self):
        parts = [self.conv.weight, self.conv.bias]
        if self.bn is not None:
            parts += [self.bn.weight, self.bn.bias]
        return [p for p in parts if p is not None]

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, C_in, *S) -> a = B(W_xy * x) + gamma for every gate copy, (N, reps*C, *S')."""
        if self.residual:
            identity = x if self.downsample is None else _bn_eval(self.downsample[0](x), self.downsample[1])
            x = F.relu(_bn_eval(self.conv1(x), self.bn1))
        a = self.conv(x)
        if self.bn is not None:
            a = _bn_eval(a, self.bn)
        if self.residual:
            a = a + (identity.repeat(1, self.reps, *[1] * (identity.dim() - 2)) if self.reps > 1 else identity)
        return a

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, *S) -> (N, P): u = P(B(W_xy * x) + gamma) per gate copy (Eq. 7 / Eq. 10, conv)."""
        return self.pre_activation(x).flatten(2).mean(2)

    def _map(self, a: torch.Tensor, u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The map fed upward: pools(ReLU(a_copy) + (y - y0)), a (N, reps*C, *S), u (N, P), y (N, C)."""
        C = self.hidden_size
        y0, _, _ = self.recurrence.step(u, self.recurrence.zero_state(u.shape[0], u))  # the cell on u, no memory
        m = F.relu(a[:, self.map_copy * C:(self.map_copy + 1) * C])
        return self.after(m + (y - y0).reshape(*y.shape, *[1] * (m.dim() - 2)))

    def _encode_seq(self, x: torch.Tensor):
        """x (B, T, C_in, *S) -> (a (B*T, reps*C, *S'), u (B*T, P))."""
        a = self.pre_activation(x.flatten(0, 1))
        return a, a.flatten(2).mean(2)

    def _out(self, a, u, y_seq):
        if self.output == "state":
            return y_seq
        B, T = y_seq.shape[:2]
        return self._map(a, u, y_seq.flatten(0, 1)).unflatten(0, (B, T))

    def step(self, x_t: torch.Tensor, state=None):
        """x_t (B, C_in, *S) -> (y_t (B, C) or the map (B, C, *S''), state); matches ``forward`` over a clip."""
        a = self.pre_activation(x_t)
        u = a.flatten(2).mean(2)
        y, state, _ = self.recurrence.step(u, state)
        return (y if self.output == "state" else self._map(a, u, y)), state

    def forward_reference(self, x: torch.Tensor, record: bool = False):
        """Step-by-step path: x (B, T, C_in, *S) -> (output (B, T, ...), {gate: (B, T, C)} when record)."""
        a, u = self._encode_seq(x)
        y, gates = self.recurrence.run_reference(u.unflatten(0, x.shape[:2]), record)
        return self._out(a, u, y), gates

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C_in, *S) -> (B, T, C) [output "state"] or (B, T, C, *S'') [output "map"], from a zero state."""
        a, u = self._encode_seq(x)
        return self._out(a, u, self.recurrence.run(u.unflatten(0, x.shape[:2])))

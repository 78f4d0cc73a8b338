"""Recurrent layers that replace a trained non-recurrent layer (PreRNN), plus the traditional RNN layer.

- ``FCRecurrent``: a fully connected layer made recurrent. VRNN: Eq. (5) y_t = H(W_xy x_t + b + W_hh y_{t-1})
  with H the replaced layer's own activation. Gate-dependent LSTM/GRU: Eqs. (7)-(9), the stacked
  ``weight_ih`` (G*H, D) / ``bias_ih`` start as G copies of the trained W_xy / b and are fine-tuned separately.
  SIH: Eqs. (10)-(12), ``weight_ih`` (H, D) is the trained layer itself, v_t = W_xy x_t + b shared by all gates.
  With ``inherited=False`` it is the traditional, randomly initialised RNN layer of FIG. 1C/1D (Eqs. 1-3).
- ``ConvRecurrent``: the last ResNet block + global average pooling made recurrent, Eq. (6) / Eq. (7)/(10)
  conv case: u_t = P(B(W_xy * x_t) + gamma_t) with the trained running statistics, then the recurrence over
  the pooled vector. Gate-dependent: conv2/bn2 are stacked G copies (one batched conv).

Every layer maps (B, T, *F) -> (B, T, H) from a zero state (``forward``, fast path), and offers
``step(x_t, state)`` and ``forward_reference(x, record)`` (the step-by-step reference path).
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


def _bn_eval(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """Batch norm with the trained running statistics (Eq. 6's B), in training mode too."""
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


class ConvRecurrent(_RecurrentLayer):
    """The last residual block + global average pooling as a recurrent layer (Eq. 6; Eqs. 7, 10 conv case).

    conv1/bn1/downsample are the block's own (inherited); conv2/bn2 hold W_xy and its batch norm,
    stacked G times for gate-dependent cells. u_t = mean_HW(B(conv2(relu(B(conv1 x_t)))) + gamma_t).
    Batch norms always use the trained running statistics. VRNN activation is the block's ReLU.
    """

    def __init__(self, block, cell: str, *, sih: bool = False, gru_reset: str = "before",
                 hh_init: str = "orthogonal"):
        super().__init__()
        C = block.conv2.out_channels
        self.recurrence = Recurrence(cell, C, sih=sih, activation="relu", gru_reset=gru_reset, hh_init=hh_init)
        self.inherited = True
        reps = self.recurrence.input_size // C
        self.conv1 = copy.deepcopy(block.conv1)
        self.bn1 = copy.deepcopy(block.bn1)
        self.downsample = copy.deepcopy(block.downsample)
        c2 = block.conv2
        self.conv2 = nn.Conv2d(c2.in_channels, reps * C, c2.kernel_size, c2.stride, c2.padding,
                               bias=c2.bias is not None)
        self.bn2 = nn.BatchNorm2d(reps * C, eps=block.bn2.eps, momentum=block.bn2.momentum)
        self.reps = reps
        with torch.no_grad():
            self.conv2.weight.copy_(c2.weight.detach().repeat(reps, 1, 1, 1))
            if c2.bias is not None:
                self.conv2.bias.copy_(c2.bias.detach().repeat(reps))
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(self.bn2, name).copy_(getattr(block.bn2, name).detach().repeat(reps))
        self.dropout = nn.Identity()

    def input_copy_parameters(self):
        return [p for p in (self.conv2.weight, self.conv2.bias, self.bn2.weight, self.bn2.bias) if p is not None]

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, H, W) -> (N, P): P(B(W_xy * x) + gamma) per gate copy (Eq. 7 / Eq. 10, conv)."""
        identity = x if self.downsample is None else _bn_eval(self.downsample[0](x), self.downsample[1])
        y = F.relu(_bn_eval(self.conv1(x), self.bn1))
        y = _bn_eval(self.conv2(y), self.bn2)  # (N, reps*C, h, w)
        if self.reps > 1:
            identity = identity.repeat(1, self.reps, 1, 1)
        return (y + identity).flatten(2).mean(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C, H, W) -> (B, T, H) from a zero state (fast path)."""
        return self.recurrence.run(self._project_seq(x))

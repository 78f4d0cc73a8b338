"""Recurrent parameter counts: what making a network recurrent adds ([0045], [0053], [0068])."""
from __future__ import annotations

from .backbones import Backbone
from .sequence import SequenceModel


def count_recurrent_parameters(model) -> int:
    """Parameters that making the network recurrent adds beyond the trained layers ([0053], [0068]).

    PreRNN SIH: W_hh + b_hh only. PreRNN gate-dependent: also the (G-1) extra copies of the inherited
    input weights + bias (a conv layer: its kernel, bias and batch norm scale and shift, Eq. 7's conv case). Traditional: all weights of its RNN layers (W_ih, b_ih, W_hh, b_hh); its new
    classifier is not counted (it replaces the trained classifier, it is not recurrent). Backbone: 0.
    """
    if isinstance(model, Backbone):
        return 0
    if not isinstance(model, SequenceModel):
        raise ValueError(f"expected a SequenceModel or Backbone, got {type(model).__name__}")
    return int(sum(m.recurrent_parameter_count() for m in model.recurrent_layers().values()))

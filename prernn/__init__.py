"""prernn: make trained CNN layers recurrent (PreRNN, PreRNN-SIH) for visual sequence learning.

Imports torch only. Each module's docstring names the patent equations it implements: the patent is
US 2018/0373985 A1 (equations, claims and paragraphs such as [0052] are its own).

    import prernn, torch
    cnn = prernn.create_backbone("vgg_mini", num_classes=10, input_size=32)    # or load_pretrained(...)
    model = prernn.convert(cnn, ["fc6"], "lstm", sih=True)                    # PreRNN-SIH, Eqs. (10)-(11)
    logits = model(torch.randn(2, 8, 3, 32, 32))                              # (B, T, K)
    stats = prernn.gate_statistics(model, torch.randn(2, 8, 3, 32, 32))
    keep = prernn.is_saturated(stats["fc6"], gates="embodiment")              # claim 12 on the forget gate

Any other trained ``nn.Module`` converts by its layers' qualified names (``prernn.generic``):
``prernn.convert(onet, ["dense5"], "gru")`` returns each frame's outputs (B, T, ...), a tuple for several heads.
"""
from . import backbones as _backbones  # noqa: F401  (fills the registry)
from .backbones import Backbone
from .cells import CELLS, GATE_NAMES, GATED_CELLS, GRU_RESETS, HH_INITS, check_sih, sih_applies
from .layers import ConvRecurrent, FCRecurrent
from .pretrained import load_pretrained
from .registry import backbone_options, create_backbone, list_backbones, register_backbone
from .counting import count_recurrent_parameters
from .model_config import ModelConfig
from .sequence import (SequenceModel, build_from_config, candidate_layers, check_layers, clip_output, convert,
                       default_candidates, frame_model, readout, traditional, trunk_boundary)
from .generic import ModuleSequenceModel, build_module, convertible_layers
from .stats import EMBODIMENT_GATES, SELECT_GATES, deciding_gates, gate_statistics, is_saturated

__all__ = [
    "Backbone", "SequenceModel", "FCRecurrent", "ConvRecurrent", "CELLS", "GATE_NAMES", "GATED_CELLS", "GRU_RESETS",
    "HH_INITS", "check_sih", "sih_applies", "check_layers",
    "backbone_options", "create_backbone", "list_backbones", "register_backbone", "load_pretrained", "candidate_layers",
    "default_candidates", "trunk_boundary", "convert", "traditional", "build_from_config", "count_recurrent_parameters",
    "gate_statistics", "is_saturated", "deciding_gates", "EMBODIMENT_GATES", "SELECT_GATES", "readout", "clip_output",
    "frame_model", "ModelConfig", "ModuleSequenceModel", "build_module", "convertible_layers",
]

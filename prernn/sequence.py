"""SequenceModel and the conversion entry points (claim 1: replace non-recurrent layers by recurrent ones).

``convert``: the chosen candidate layers of a trained Backbone (fc and conv, any combination, [0065]) become
PreRNN layers (``prernn.layers``); stages below the first converted layer run per frame, converted layers run
over time, stages above run per time step. ``traditional``: the prior-art baselines of FIG. 1C/1D, a randomly initialised RNN of
1 or 2 layers on top of the last feature layer, then a new classifier.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .backbones import Backbone, FCStage
from .cells import CELLS, GRU_RESETS, HH_INITS, check_choice, check_sih
from .layers import ConvRecurrent, FCRecurrent
from .model_config import KINDS, ModelConfig
from .registry import create_backbone


def _backbone(model) -> Backbone:
    if not isinstance(model, Backbone):
        raise ValueError(f"expected a prernn Backbone (from create_backbone), got {type(model).__name__}")
    return model


def candidate_layers(model) -> list[str]:
    """Names of the layers that can be made recurrent, in forward order.

    vgg_mini: conv1, conv2, conv3 (the last conv layer of each block), fc6, fc7; vgg16: conv1_2 .. conv5_3, fc6,
    fc7; c3d_mini: conv3 (its last 3D conv), fc6, fc7; ResNet: every stage's last residual block. Any other
    ``nn.Module``: its convertible layers by qualified name (``prernn.generic.convertible_layers``).
    """
    if isinstance(model, SequenceModel):
        return list(model.config["candidates"])
    if isinstance(model, nn.Module) and not isinstance(model, Backbone):
        from .generic import convertible_layers
        return convertible_layers(model)
    return list(_backbone(model).candidates)


def default_candidates(model) -> list[str]:
    """The candidates a search combines when it names no layers: fc6, fc7 of VGG / C3D (Table 1, [0067]); the last
    residual block of a ResNet (it feeds the global pooling, FIG. 1E). Any other ``nn.Module``: its convertible
    ``nn.Linear`` layers, else all its convertible layers (``prernn.generic.default_module_layers``)."""
    if isinstance(model, nn.Module) and not isinstance(model, (Backbone, SequenceModel)):
        from .generic import default_module_layers
        return default_module_layers(model)
    return list(_backbone(model).default_candidates)


def trunk_boundary(model, layers=None) -> str:
    """The first stage that is not part of the frozen per-frame trunk (the trunk's output is cacheable).

    Backbone without ``layers``: the lowest default candidate (fc6 for VGG / C3D), the boundary every
    traditional baseline and every default conversion shares. With ``layers`` (a conversion): the lower of
    that and the lowest converted layer, so the trunk ends below every converted layer and a conversion of
    default candidates keeps the boundary (and the fine-tuned layers) it had. SequenceModel: the boundary
    recorded when it was built.
    """
    if isinstance(model, SequenceModel):
        return model.config["trunk_boundary"]
    bb = _backbone(model)
    names = list(bb.stages)
    default = bb.default_candidates[0]
    if layers is None:
        return default
    lowest = _ordered_layers(bb, layers)[0]
    return min(default, lowest, key=names.index)


class SequenceModel(nn.Module):
    """Ordered named stages over clips; some are recurrent.

    forward(clips (B, T, C, H, W) [3D: (B, T, C, L, H, W)], start=None) -> (B, T, K). With ``start`` the input
    is the features entering that stage, (B, T, *F). ``step(frame, state)`` runs one time step.
    ``model_config``: the ``ModelConfig`` it was built from; ``config``: its plain mapping (``to_dict()``), what
    checkpoints store and ``build_from_config`` reads.
    """

    def __init__(self, stages, recurrent, config: ModelConfig | dict, *, is_3d: bool = False, new_stages=()):
        super().__init__()
        self.stages = nn.ModuleDict(stages)
        self._recurrent = [n for n in self.stages if n in set(recurrent)]
        self._new_stages = list(new_stages)
        self.model_config = config if isinstance(config, ModelConfig) else ModelConfig.from_dict(config)
        self.config = self.model_config.to_dict()
        self.is_3d = bool(is_3d)

    def recurrent_layers(self) -> dict[str, nn.Module]:
        """{name: recurrent layer} in forward order; each maps (B, T, *F) -> (B, T, H) from a zero state."""
        return {n: self.stages[n] for n in self._recurrent}

    def _names_from(self, start):
        names = list(self.stages)
        if start is None:
            return names
        if start not in self.stages:
            raise ValueError(f"unknown start stage {start!r}; expected one of {names}")
        return names[names.index(start):]

    def forward(self, clips: torch.Tensor, start: str | None = None) -> torch.Tensor:
        B, T = clips.shape[:2]
        x = clips
        for name in self._names_from(start):
            m = self.stages[name]
            if name in self._recurrent:
                x = m(x)  # (B, T, *F) -> (B, T, H)
            else:
                x = m(x.flatten(0, 1)).unflatten(0, (B, T))  # per frame
        return x

    def forward_reference(self, clips: torch.Tensor, start: str | None = None, record: bool = False):
        """Like ``forward`` but recurrent layers use the step-by-step path; returns (out, {layer: {gate: (B,T,H)}})."""
        B, T = clips.shape[:2]
        x, gates = clips, {}
        for name in self._names_from(start):
            m = self.stages[name]
            if name in self._recurrent:
                x, g = m.forward_reference(x, record)
                gates[name] = g
            else:
                x = m(x.flatten(0, 1)).unflatten(0, (B, T))
        return x, gates

    def step(self, frame: torch.Tensor, state=None, start: str | None = None):
        """One time step: frame (B, C, H, W) [3D: (B, C, L, H, W)] -> (out (B, K), state dict)."""
        state = dict(state or {})
        x = frame
        for name in self._names_from(start):
            m = self.stages[name]
            if name in self._recurrent:
                x, state[name] = m.step(x, state.get(name))
            else:
                x = m(x)
        return x, state

    def new_parameters(self):
        """Parameters trained from scratch: hidden-to-hidden weights (traditional: the RNN and new classifier)."""
        seen = set()
        for n in self._recurrent:
            for p in self.stages[n].new_parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield p
        for n in self._new_stages:
            for p in self.stages[n].parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield p

    def inherited_parameters(self):
        """Parameters carried over from the trained CNN (to be fine-tuned)."""
        new = {id(p) for p in self.new_parameters()}
        for p in self.parameters():
            if id(p) not in new:
                yield p


def check_layers(layers, candidates) -> list[str]:
    """`layers` (names, or one name) as a set of layers to make recurrent, in the order of `candidates` (the
    backbone's, forward order); ValueError when it is empty, names a non-candidate, or names a layer twice."""
    layers = [layers] if isinstance(layers, str) else list(layers or [])
    candidates = list(candidates)
    if not layers:
        raise ValueError(f"an empty layer set; give at least one of {candidates}")
    bad = [name for name in layers if name not in candidates]
    if bad:
        raise ValueError(f"{bad} not candidate layers of the backbone; allowed: {candidates}")
    twice = sorted({name for name in layers if layers.count(name) > 1})
    if twice:
        raise ValueError(f"{twice} named twice")
    return [name for name in candidates if name in layers]


def _ordered_layers(bb: Backbone, layers) -> list[str]:
    try:
        chosen = check_layers(layers, bb.candidates)
    except ValueError as err:
        raise ValueError(f"layers {layers!r}: {err}") from None
    return [n for n in bb.stages if n in chosen]


def convert(model, layers, cell: str, sih: bool = False, *, hh_init: str = "orthogonal",
            gru_reset: str = "before") -> SequenceModel:
    """Replace ``layers`` of a trained Backbone by PreRNN layers (``model`` is not modified).

    Fully connected layers: Eq. (5) VRNN (the layer's own activation as H, its dropout kept), Eqs. (7)-(9)
    gate-dependent LSTM/GRU (every gate starts from a copy of W_xy, b), Eqs. (10)-(12) SIH (one shared
    v_t = W_xy x_t + b). Convolutional (a ResNet stage's last block, a VGG block's last conv, C3D's last 3D
    conv): Eq. (6) and the conv cases of Eqs. (7), (10) (``ConvRecurrent``); a conv layer below the global
    pooling absorbs it (output the pooled state), any other feeds the layer above the trained map plus the
    recurrent change (``ConvRecurrent``'s ``output="map"``). Any set of candidates, conv and fc together ([0065]).
    Hidden-to-hidden weights start random (``hh_init``) with zero biases. Any other ``nn.Module``: its layers by
    qualified name (``prernn.generic.convert_module``).
    """
    if not isinstance(model, Backbone):
        from .generic import convert_module
        return convert_module(model, layers, cell, sih, hh_init=hh_init, gru_reset=gru_reset)
    bb = _backbone(model)
    check_choice("cell", cell, CELLS)
    check_choice("hh_init", hh_init, HH_INITS)
    check_choice("gru_reset", gru_reset, GRU_RESETS)
    check_sih(cell, sih)
    order = _ordered_layers(bb, layers)
    kw = dict(sih=bool(sih), gru_reset=gru_reset, hh_init=hh_init)
    stages, skip = [], set()
    for name, stage in bb.stages.items():
        if name in skip:
            continue
        if name not in order:
            stages.append((name, copy.deepcopy(stage)))
        elif isinstance(stage, FCStage):
            act = stage.activation or "tanh"
            p = stage.dropout.p if isinstance(stage.dropout, nn.Dropout) else 0.0
            stages.append((name, FCRecurrent.from_linear(stage.linear, cell, activation=act, dropout=p, **kw)))
        else:
            output = "state" if name in bb.absorbs else "map"
            stages.append((name, ConvRecurrent(stage, cell, output=output, **kw)))
            if name in bb.absorbs:
                skip.add(bb.absorbs[name])
    config = ModelConfig("prernn", bb.config, order, cell, bool(sih), hh_init=hh_init, gru_reset=gru_reset,
                         candidates=list(bb.candidates), trunk_boundary=trunk_boundary(bb, order))
    return SequenceModel(stages, order, config, is_3d=bb.is_3d)


def traditional(model, cell: str, num_layers: int = 1, hidden_size: int | None = None, *,
                hh_init: str = "orthogonal", gru_reset: str = "before") -> SequenceModel:
    """Prior-art baseline (FIG. 1C/1D): trained CNN up to its last feature layer (VGG/C3D: fc7 output,
    ResNet: pooled features) per frame, then ``num_layers`` (1 or 2) randomly initialised RNN layers
    "rnn1", "rnn2" (Eqs. 1-3; input weights torch-style uniform, W_hh ``hh_init``, VRNN uses tanh), then a new
    classifier. ``hidden_size`` None = width of the last feature layer.
    """
    bb = _backbone(model)
    check_choice("cell", cell, CELLS)
    check_choice("hh_init", hh_init, HH_INITS)
    check_choice("gru_reset", gru_reset, GRU_RESETS)
    if num_layers not in (1, 2):
        raise ValueError(f"num_layers must be 1 or 2, got {num_layers!r}")
    H = int(hidden_size) if hidden_size is not None else bb.feature_dim
    if H < 1:
        raise ValueError(f"hidden_size must be >= 1, got {hidden_size!r}")
    stages = []
    for name, stage in bb.stages.items():
        stages.append((name, copy.deepcopy(stage)))
        if name == bb.feature_layer:
            break
    rnn, d = [], bb.feature_dim
    for i in range(1, num_layers + 1):
        rnn.append(f"rnn{i}")
        stages.append((f"rnn{i}", FCRecurrent(d, H, cell, activation="tanh", gru_reset=gru_reset,
                                              hh_init=hh_init, inherited=False)))
        d = H
    stages.append(("classifier", FCStage(H, bb.num_classes, None, 0.0)))
    config = ModelConfig("traditional", bb.config, [], cell, False, int(num_layers), H, hh_init, gru_reset,
                         list(bb.candidates), trunk_boundary(bb))
    return SequenceModel(stages, rnn, config, is_3d=bb.is_3d, new_stages=["classifier"])


def frame_model(model) -> SequenceModel:
    """The trained CNN applied to every frame, no recurrent layer (the frame reference of Table 1):
    (B, T, ...) -> (B, T, K); its clip readout is the mean over T (``readout``). Any other ``nn.Module``:
    ``prernn.generic.frame_module``."""
    if not isinstance(model, Backbone):
        from .generic import frame_module
        return frame_module(model)
    bb = _backbone(model)
    config = ModelConfig("frames", bb.config, candidates=list(bb.candidates), trunk_boundary=trunk_boundary(bb))
    return SequenceModel([(n, copy.deepcopy(s)) for n, s in bb.stages.items()], [], config, is_3d=bb.is_3d)


READOUTS = ("last", "mean")


def readout(model) -> str:
    """How one prediction per clip is read off a model's per-step outputs (B, T, K).

    "last": a model with recurrent layers answers with its last step, the state after the whole clip (its
    training loss is taken there too: an early step cannot know the direction of a motion, so a loss there only
    rewards memorising the training clips). "mean": a model without recurrence (the trained CNN per frame)
    averages its per-frame outputs over the clip.
    """
    return "last" if isinstance(model, SequenceModel) and model.recurrent_layers() else "mean"


def clip_output(outputs: torch.Tensor, how: str) -> torch.Tensor:
    """Per-step outputs (B, T, K) -> one per clip (B, K): the last step ("last") or the mean over T ("mean")."""
    if how not in READOUTS:
        raise ValueError(f"readout must be one of {list(READOUTS)}, got {how!r}")
    return outputs[:, -1] if how == "last" else outputs.mean(1)


def build_from_config(config: ModelConfig | dict, backbone: Backbone | None = None):
    """Rebuild a Backbone or SequenceModel (random weights) from its ``.config``; then ``load_state_dict``.

    A mapping without ``kind`` is a Backbone's config. A ``ModelConfig``, or a mapping ``ModelConfig.from_dict``
    reads (a SequenceModel's ``.config``, a search trial's configuration), is built as ``convert`` /
    ``traditional`` / ``frame_model`` built it; with a trained ``backbone`` on that backbone (its ``backbone``
    key is then not needed): the one way to build a model from a search trial's configuration. A user's own
    module: ``{"builder": "package.module:function", "kwargs": {...}}`` builds it (``prernn.generic.build_module``:
    the import path is code the user trusts, like an entry point), and a model converted from it records that as
    its ``backbone``."""
    if isinstance(config, dict) and "kind" not in config:
        if "builder" in config:  # {"builder": "package.module:function", "kwargs"}: imports and runs trusted code
            from .generic import build_module
            return build_module(config)
        missing = [k for k in ("name", "num_classes") if k not in config]
        if missing:
            raise ValueError(f"backbone config is missing keys {missing}; got keys {sorted(config)}")
        return create_backbone(config["name"], config["num_classes"], config.get("in_channels", 3),
                               **config.get("kwargs", {}))
    mc = config if isinstance(config, ModelConfig) else ModelConfig.from_dict(config)
    if backbone is None and not mc.backbone:
        raise ValueError(f"{mc.kind} config names no backbone or builder; pass the trained model as backbone=")
    bb = backbone if backbone is not None else build_from_config(mc.backbone)
    if mc.kind == "prernn":
        return convert(bb, mc.layers, mc.cell, mc.sih, hh_init=mc.hh_init, gru_reset=mc.gru_reset)
    if mc.kind == "traditional":
        return traditional(bb, mc.cell, mc.num_layers, mc.hidden_size, hh_init=mc.hh_init, gru_reset=mc.gru_reset)
    assert mc.kind == "frames", KINDS  # ModelConfig refuses any other kind
    return frame_model(bb)  # the trained CNN applied per frame, no recurrent layer (the frame reference)

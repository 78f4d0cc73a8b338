"""Convert any ``torch.nn.Module`` by its layers' qualified names (claim 1 on a network the project never saw).

``convert_module(module, ["dense5"], "lstm", sih=True)`` (what ``prernn.convert`` calls for a model that is not
a registered ``Backbone``) deep-copies the trained module and swaps each named layer for a ``RecurrentSlot``
holding its recurrent form; the user's own ``forward`` is kept:

- ``nn.Linear`` (``"dense5"``, ``"classifier.0"``): Eq. (5) VRNN, Eqs. (7)-(9) gate-dependent LSTM/GRU, Eqs.
  (10)-(12) SIH (``FCRecurrent.from_linear``). An ``nn.Linear`` has no activation of its own: whatever the
  user's forward applies after it (ONet's ``prelu5``, a VGG classifier's ReLU) stays where it is and is applied
  to y_t, as the trained network applies it to W_xy x_t + b. Eq. (5)'s H is therefore the identity inside the
  cell: y_t = W_xy x_t + b + W_hh y_{t-1} + b_hh, and at t = 0 (y_{-1} = 0, b_hh = 0) the VRNN form gives the
  trained network's outputs exactly. (The recurrence itself is linear; a nonlinearity between steps is the
  gated cells' job, and W_hh starts orthogonal, so the state does not contract or blow up at once.)
- a conv layer with its activation (Eq. 6, ``ConvRecurrent``): a residual block with torchvision's
  BasicBlock children (``conv1, bn1, relu, conv2, bn2[, downsample]``, e.g. ``"layer4.1"``) or an
  ``nn.Sequential(conv, [batch norm,] ReLU, pools...)``. A block with those children is taken to compute
  torchvision's BasicBlock forward (relu(bn2(conv2(relu(bn1(conv1 x)))) + downsample x)); one that orders them
  otherwise (a pre-activation block) would be converted wrongly: compare t = 0 with the trained network. The
  recurrence runs over the pooled vector u_t = P(B(W_xy * x_t) + gamma_t) (Eq. 6/7/10); the block hands the user's forward the map it had, the trained
  map plus the recurrent state's change ``ConvRecurrent(output="map")``: exact at t = 0 for every cell, and where
  the forward pools the map globally (a ResNet's ``avgpool``) the pooled vector is the trained one plus
  y_t - y0_t. The state form (y_t itself as the pooled vector) needs the pool cut out of the user's graph: not
  done here.

Refused, with the layer's name and why: a name that is no submodule; a module of another kind (PReLU, pools,
an ``nn.Sequential`` of several layers...); a bare ``nn.Conv2d`` whose activation is a separate module (Eq. 6
puts its ReLU H inside the recurrence; name the block that holds conv and ReLU); a residual block with other
children (a Bottleneck's conv3); a grouped conv; a layer inside another named one; at the first forward, a
Linear whose input is not one vector per frame (N, D), a layer that ran twice in one frame or not at all.

The converted model (``ModuleSequenceModel``, a ``SequenceModel``) takes clips (B, T, ...) and returns what the
module returns, per frame (B, T, ...): a tensor, or a tuple / list / dict of them for several heads. ``forward``
runs the module once on the B*T frames, each slot runs its layer over time (fast path); ``forward_reference``
the same with the step-by-step path (gate statistics); ``step(frame, state)`` calls the module once per time
step with each slot's state threaded through. The module must treat the frames of a batch independently (as
any per-frame CNN does in eval mode).

``build_module({"builder": "package.module:function", "kwargs": {...}})`` imports and calls a builder and
records the spec on the module (``PRERNN_BUILDER`` attribute), so a converted model's ``config["backbone"]``
rebuilds it (``prernn.build_from_config``). The import path is code you trust, like a Python entry point:
building from a config runs it; never build from a config you did not write.
"""
from __future__ import annotations

import copy
import pkgutil

import torch
from torch import nn

from .cells import CELLS, GRU_RESETS, HH_INITS, Recurrence, check_choice, check_sih
from .layers import BN_TYPES, CONV_TYPES, ConvRecurrent, FCRecurrent, _conv_parts
from .model_config import ModelConfig
from .sequence import SequenceModel

PRERNN_BUILDER = "prernn_builder"  # attribute of a module built by build_module: its {"builder", "kwargs"} spec
CONVERTIBLE = ("nn.Linear; a residual block (conv1, bn1, relu, conv2, bn2[, downsample]); "
               "nn.Sequential(conv, [batch norm,] ReLU, pools...)")
BLOCK_CHILDREN = {"conv1", "bn1", "relu", "conv2", "bn2", "downsample"}  # taken to compute BasicBlock's forward
BLOCK_REQUIRED = {"conv1", "bn1", "conv2", "bn2"}


# ---- the layers --------------------------------------------------------------------------------------------------

class IdentityRecurrence(Recurrence):
    """Eq. (5) VRNN with H = identity: h_t = u_t + W_hh h_{t-1} + b_hh (an nn.Linear's own activation); the
    activation the user's forward applies after the layer stays outside the cell. No torch module computes it:
    ``run`` is the step loop (autograd through time)."""

    def __init__(self, hidden_size: int, *, hh_init: str = "orthogonal"):
        super().__init__("vrnn", hidden_size, activation="tanh", hh_init=hh_init)
        self.activation = "identity"

    @property
    def torch_form(self) -> bool:
        return False

    def step(self, u_t: torch.Tensor, state=None):
        """u_t (B, H) -> (h_t (B, H), (h_t,), {})."""
        h = u_t.new_zeros(u_t.shape[0], self.hidden_size) if state is None else state[0]
        h = u_t + h @ self.weight_hh.t() + self.bias_hh
        return h, (h,), {}

    def run(self, u: torch.Tensor) -> torch.Tensor:
        """u (B, T, H) -> (B, T, H) from a zero state."""
        return self.run_reference(u)[0]


def linear_recurrent(linear: nn.Linear, cell: str, **kw) -> FCRecurrent:
    """A trained nn.Linear as a recurrent layer: ``FCRecurrent.from_linear``; VRNN with H = identity."""
    layer = FCRecurrent.from_linear(linear, cell, activation="tanh", **kw)
    if cell == "vrnn":
        identity = IdentityRecurrence(layer.hidden_size, hh_init=kw.get("hh_init", "orthogonal"))
        with torch.no_grad():
            identity.weight_hh.copy_(layer.recurrence.weight_hh)
        layer.recurrence = identity
    return layer


def _refusal(name: str, layer: nn.Module) -> str | None:
    """Why the module ``layer`` (called ``name``) cannot be converted; None when it can."""
    kind = type(layer).__name__
    if isinstance(layer, nn.Linear):
        return None
    if isinstance(layer, CONV_TYPES):
        return (f"layer {name!r} is a bare {kind} whose activation is a separate module; Eq. (6) puts the "
                f"activation (ReLU) inside the recurrence: name the block holding conv, [batch norm,] ReLU")
    if hasattr(layer, "conv2") and hasattr(layer, "bn2"):
        children = {n for n, _ in layer.named_children()}
        extra, missing = sorted(children - BLOCK_CHILDREN), sorted(BLOCK_REQUIRED - children)
        if extra or missing or not all(isinstance(getattr(layer, c), CONV_TYPES) for c in ("conv1", "conv2")) \
                or not all(isinstance(getattr(layer, b), BN_TYPES) for b in ("bn1", "bn2")):
            return (f"layer {name!r} is a {kind} with children {sorted(children)}; a residual block converts "
                    f"with exactly torchvision's BasicBlock children {sorted(BLOCK_CHILDREN)} (conv, batch norm; "
                    f"extra: {extra}, missing: {missing})")
    elif not (isinstance(layer, nn.Sequential) and len(layer) and isinstance(layer[0], CONV_TYPES)):
        return f"layer {name!r} is a {kind}; convertible layers: {CONVERTIBLE}"
    try:
        _, conv, _, _ = _conv_parts(layer)  # ConvRecurrent's own check: the ReLU after the conv
    except ValueError as err:
        return f"layer {name!r} ({kind}): {err}"
    if conv.groups != 1:
        return f"layer {name!r} ({kind}): a grouped conv (groups={conv.groups}) cannot be converted; expected groups=1"
    return None


def convertible_layers(module: nn.Module) -> list[str]:
    """Qualified names of the submodules ``convert_module`` accepts, in the module's registration order."""
    return [n for n, m in module.named_modules() if n and _refusal(n, m) is None]


def default_module_layers(module: nn.Module) -> list[str]:
    """The layers a search combines when it names none (``prernn.default_candidates`` of a user's module): its
    convertible ``nn.Linear`` layers (the fc layers, as VGG's fc6 / fc7), else every convertible layer."""
    layers = convertible_layers(module)
    linear = [n for n in layers if isinstance(module.get_submodule(n), nn.Linear)]
    return linear or layers


class RecurrentSlot(nn.Module):
    """Stands in the user's module where the converted layer was; holds ``layer`` (FCRecurrent / ConvRecurrent).

    The owning ``ModuleSequenceModel`` sets ``run`` before calling the user's forward: ("clip", B, T, how) with
    the B*T frames of B clips coming in (N = B*T, *F), or ("step", state) with one frame per clip (B, *F).
    The slot returns what the replaced layer returned per frame and keeps ``result`` (gates or the new state).
    """

    def __init__(self, name: str, layer: nn.Module):
        super().__init__()
        self.name = name
        self.layer = layer
        self.run = None
        self.result = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.run is None:
            raise RuntimeError(f"layer {self.name!r} ran outside its ModuleSequenceModel, or twice in one frame; "
                               "a layer used more than once per frame cannot hold one state")
        run, self.run = self.run, None
        if isinstance(self.layer, FCRecurrent) and x.dim() != 2:
            raise ValueError(f"layer {self.name!r}: a Linear converts where its input is one vector per frame "
                             f"(N, D); got shape {tuple(x.shape)}")
        if run[0] == "step":
            y, self.result = self.layer.step(x, run[1])
            return y
        _, B, T, how = run
        if x.shape[0] != B * T:
            raise ValueError(f"layer {self.name!r} got {x.shape[0]} rows for {B} clips x {T} frames; the module "
                             "must keep the batch as its input's first dimension")
        seq = x.unflatten(0, (B, T))  # (B, T, *F)
        if how == "fast":
            y = self.layer(seq)
        else:
            y, self.result = self.layer.forward_reference(seq, how == "record")
        return y.flatten(0, 1)  # (B*T, ...)


def _tree_map(fn, out):
    """``fn`` on every tensor of a module's output: a tensor, or a tuple / list / dict of them (nested)."""
    if isinstance(out, torch.Tensor):
        return fn(out)
    if isinstance(out, dict):
        return {k: _tree_map(fn, v) for k, v in out.items()}
    if isinstance(out, (tuple, list)):
        return type(out)(_tree_map(fn, v) for v in out) if type(out) in (tuple, list) else \
            type(out)(*(_tree_map(fn, v) for v in out))  # a namedtuple
    raise TypeError(f"the module returned a {type(out).__name__}; expected a tensor or a tuple / list / dict of them")


class ModuleSequenceModel(SequenceModel):
    """A user's module with some layers made recurrent (``convert_module``), or none (``frame_module``).

    forward(clips (B, T, *X)) -> the module's outputs per frame, each (B, T, ...). ``step(frame (B, *X), state)``
    -> (outputs (B, ...), state dict {layer: state}). ``stages`` is empty: the module is ``self.module``, its
    converted layers ``RecurrentSlot``s; ``start`` (running from a stage's features) needs the graph cut below a
    layer, which this class does not do (ValueError).
    """

    def __init__(self, module: nn.Module, layers, config):
        super().__init__({}, [], config)
        self.module = module
        self._layers = list(layers)

    def _slots(self) -> dict[str, RecurrentSlot]:
        return {n: self.module.get_submodule(n) for n in self._layers}

    def recurrent_layers(self) -> dict[str, nn.Module]:
        """{name: recurrent layer} in the module's registration order."""
        return {n: s.layer for n, s in self._slots().items()}

    def new_parameters(self):
        """W_hh, b_hh of every converted layer (trained from scratch)."""
        for layer in self.recurrent_layers().values():
            yield from layer.new_parameters()

    @staticmethod
    def _no_start(start):
        if start is not None:
            raise ValueError(f"start={start!r}: a converted nn.Module runs from its input only (the trunk below "
                             "a layer is not cut from its graph); pass start=None")

    def _call(self, frames, runs):
        slots = self._slots()
        for name, slot in slots.items():
            slot.run, slot.result = runs(name), None
        try:
            out = self.module(frames)
            idle = [n for n, s in slots.items() if s.run is not None]
            if idle:
                raise RuntimeError(f"layers {idle} did not run in {type(self.module).__name__}.forward")
            return out, {n: s.result for n, s in slots.items()}
        finally:
            for slot in slots.values():
                slot.run = slot.result = None

    def _clips(self, clips, how):
        B, T = clips.shape[:2]
        out, results = self._call(clips.flatten(0, 1), lambda _: ("clip", B, T, how))

        def per_clip(y):
            if y.shape[:1] != (B * T,):
                raise ValueError(f"an output of shape {tuple(y.shape)} has no row per frame ({B} x {T})")
            return y.unflatten(0, (B, T))
        return _tree_map(per_clip, out), results

    def forward(self, clips: torch.Tensor, start: str | None = None):
        """clips (B, T, *X) -> the module's outputs, each (B, T, ...); every layer from a zero state."""
        self._no_start(start)
        return self._clips(clips, "fast")[0]

    def forward_reference(self, clips: torch.Tensor, start: str | None = None, record: bool = False):
        """Like ``forward`` on the layers' step-by-step path: (outputs, {layer: {gate: (B, T, H)}})."""
        self._no_start(start)
        out, gates = self._clips(clips, "record" if record else "reference")
        return out, {n: (g or {}) for n, g in gates.items()}

    def step(self, frame: torch.Tensor, state=None, start: str | None = None):
        """One time step: frame (B, *X) -> (the module's outputs (B, ...), state dict)."""
        self._no_start(start)
        state = dict(state or {})
        out, new = self._call(frame, lambda name: ("step", state.get(name)))
        state.update(new)
        return out, state


# ---- the entry points ----------------------------------------------------------------------------------------------

def check_module_layers(module: nn.Module, layers) -> list[str]:
    """``layers`` (names or one name) as qualified submodule names of ``module`` in registration order;
    ValueError naming the layer when one is missing, not convertible (and why), named twice, or inside another."""
    layers = [layers] if isinstance(layers, str) else list(layers or [])
    modules = dict(module.named_modules())
    what = type(module).__name__
    if not layers:
        raise ValueError(f"an empty layer set; give at least one of {what}'s layers {convertible_layers(module)}")
    for name in layers:
        if not name or name not in modules:
            raise ValueError(f"layer {name!r} is not a submodule of {what} (not a prernn Backbone: its layers go "
                             f"by qualified module name); convertible layers: {convertible_layers(module)}")
        why = _refusal(name, modules[name])
        if why:
            raise ValueError(why)
    twice = sorted({n for n in layers if layers.count(n) > 1})
    if twice:
        raise ValueError(f"{twice} named twice")
    for name in layers:
        outer = [o for o in layers if name.startswith(o + ".")]
        if outer:
            raise ValueError(f"layer {name!r} lies inside layer {outer[0]!r}; name one of them")
    return [n for n in modules if n in layers]


def _config(module, kind, layers, cell, sih, hh_init, gru_reset) -> ModelConfig:
    """The ModelConfig of a converted module: its builder spec (None when it was not built from one) as backbone."""
    builder = getattr(module, PRERNN_BUILDER, None)
    return ModelConfig(kind, copy.deepcopy(builder), list(layers), cell, bool(sih), hh_init=hh_init,
                       gru_reset=gru_reset, candidates=convertible_layers(module),
                       trunk_boundary=layers[0] if layers else None)


def convert_module(module: nn.Module, layers, cell: str, sih: bool = False, *, hh_init: str = "orthogonal",
                   gru_reset: str = "before") -> ModuleSequenceModel:
    """Replace ``layers`` (qualified names) of a trained ``module`` by PreRNN layers (module docstring);
    ``module`` is not modified. Hidden-to-hidden weights start random (``hh_init``) with zero biases."""
    if not isinstance(module, nn.Module):
        raise ValueError(f"expected a torch.nn.Module, got {type(module).__name__}")
    check_choice("cell", cell, CELLS)
    check_choice("hh_init", hh_init, HH_INITS)
    check_choice("gru_reset", gru_reset, GRU_RESETS)
    check_sih(cell, sih)
    order = check_module_layers(module, layers)
    kw = dict(sih=bool(sih), gru_reset=gru_reset, hh_init=hh_init)
    config = _config(module, "prernn", order, cell, sih, hh_init, gru_reset)
    module = copy.deepcopy(module)
    for name in order:
        trained = module.get_submodule(name)
        if isinstance(trained, nn.Linear):
            layer = linear_recurrent(trained, cell, **kw)
        else:
            layer = ConvRecurrent(trained, cell, output="map", **kw)
        parent, _, child = name.rpartition(".")
        setattr(module.get_submodule(parent), child, RecurrentSlot(name, layer))
    return ModuleSequenceModel(module, order, config)


def frame_module(module: nn.Module) -> ModuleSequenceModel:
    """The trained module applied to every frame, no recurrent layer (the frame reference): (B, T, *X) -> its
    outputs (B, T, ...)."""
    config = _config(module, "frames", [], None, False, "orthogonal", "before")
    return ModuleSequenceModel(copy.deepcopy(module), [], config)


def build_module(spec: dict) -> nn.Module:
    """``{"builder": "package.module:function", "kwargs": {...}}`` -> ``function(**kwargs)`` (random or whatever
    weights the builder gives; then ``load_state_dict``), with the spec recorded on it (``PRERNN_BUILDER``): every
    key of it, so that a caller's own entries (the pipeline's ``name``, ``num_classes``, ``in_channels``) travel
    in a converted model's ``config["backbone"]``.

    The builder is imported and run: it is code you trust, like a Python entry point. It is the user's code,
    found at run time: no import scanner can follow it (the project's ``tools.stage_deps`` reads it from
    params.yaml's ``pretrain.backbone`` to list its file among the DVC deps of the stages that build it)."""
    path, kwargs = spec.get("builder"), spec.get("kwargs") or {}
    if not isinstance(path, str) or path.count(":") != 1 or not all(path.split(":")):
        raise ValueError(f"builder must be 'package.module:function', got {path!r}")
    if not isinstance(kwargs, dict):
        raise ValueError(f"builder kwargs must be a dict, got {type(kwargs).__name__}")
    try:  # the standard library's resolver of the entry-point syntax
        target = pkgutil.resolve_name(path)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"builder {path!r} cannot be resolved: {err} (is its package installed, or its folder on "
                         "PYTHONPATH?)") from None
    if not callable(target):
        raise ValueError(f"builder {path!r} is not callable")
    built = target(**kwargs)
    if not isinstance(built, nn.Module):
        raise ValueError(f"builder {path!r} returned a {type(built).__name__}; expected a torch.nn.Module")
    setattr(built, PRERNN_BUILDER, {**copy.deepcopy(dict(spec)), "builder": path, "kwargs": copy.deepcopy(dict(kwargs))})
    return built

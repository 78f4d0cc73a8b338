"""The user's own trained CNN as `pretrain.backbone`: an import path `package.module:function` to a builder.

`pretrain.backbone` is a registered backbone's name (`prernn.list_backbones`) or, with a colon, the import path
of a function that returns a `torch.nn.Module` (`is_builder`). The path is code the user trusts, like a Python
entry point: every stage that builds the model imports and runs it (pretrain, search and its Ray trials, evaluate,
`prernn predict`, the MLflow model), resolved from the installed packages and the project folder (the stages run
from it; a local Ray cluster's workers get it on PYTHONPATH).

`builder_spec(pretrain, num_classes, in_channels)` -> the spec `prernn.build_from_config` builds it from
(`prernn.generic.build_module`): {"builder", "kwargs": `pretrain.backbone_kwargs` plus `num_classes` /
`in_channels` where the builder's signature takes them, "name", "num_classes", "in_channels"}; the pretrain
checkpoint's `config` and a converted model's `config["backbone"]`. `build_own(...)` builds it;
`load_own_weights(model, path)` loads `pretrain.weights` into it strictly, weights only. The module takes frames
(N, C, H, W) and must return one tensor (N, num_classes) (`check_output`): a network with several heads needs a
builder whose module returns the head to train (a subclass whose forward picks it keeps the layer names and
the state dict's keys).
"""
from __future__ import annotations

import inspect
import pkgutil

import torch

import prernn
from prernn.generic import PRERNN_BUILDER
from pipeline.core.checkpoint import RefusedFile, read_weights_only


class OwnModelError(ValueError):
    """The user's builder, its weights or its output do not fit (the message names the key and the value)."""


def is_builder(backbone: str) -> bool:
    """`pretrain.backbone` names a builder `package.module:function` (not a registered backbone)."""
    return ":" in backbone


def _takes(builder: str, name: str) -> bool:
    """The builder's signature has a parameter `name` (or **kwargs)."""
    try:
        params = inspect.signature(pkgutil.resolve_name(builder)).parameters
    except (ImportError, AttributeError, ValueError, TypeError):
        return False  # prernn.generic.build_module names what cannot be resolved
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def builder_spec(p, num_classes: int, in_channels: int = 3) -> dict:
    """The build spec of `pretrain.backbone` (module docstring) for `num_classes` outputs on `in_channels`."""
    kwargs = dict(p.backbone_kwargs)
    for key, value in (("num_classes", int(num_classes)), ("in_channels", int(in_channels))):
        if key not in kwargs and _takes(p.backbone, key):
            kwargs[key] = value
    return {"builder": p.backbone, "kwargs": kwargs, "name": p.backbone, "num_classes": int(num_classes),
            "in_channels": int(in_channels)}


def build_own(p, num_classes: int, in_channels: int = 3) -> torch.nn.Module:
    """The user's module, built by `pretrain.backbone` (its own initial weights); OwnModelError naming the key."""
    try:
        return prernn.build_from_config(builder_spec(p, num_classes, in_channels))
    except ValueError as err:
        raise OwnModelError(f"pretrain.backbone: {p.backbone!r}: {err}") from None


def load_own_weights(model: torch.nn.Module, path: str) -> None:
    """`pretrain.weights` (a state dict, read with torch.load(weights_only=True)) into `model`, strictly: every key
    and shape must match; OwnModelError naming the file and the keys."""
    try:
        state = read_weights_only(path)
    except (RefusedFile, OSError) as err:
        raise OwnModelError(f"pretrain.weights: {path!r}: {err}") from None
    if not isinstance(state, dict):
        raise OwnModelError(f"pretrain.weights: {path!r}: holds a {type(state).__name__}; expected a state dict")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise OwnModelError(f"pretrain.weights: {path!r}: does not fit the builder's module: "
                            f"{' '.join(str(err).split())[:400]}") from None


def model_config(model: torch.nn.Module) -> dict:
    """What rebuilds `model` (`prernn.build_from_config`): a Backbone's `.config`, or the build spec recorded on the
    user's module (`builder_spec`)."""
    return model.config if isinstance(model, prernn.Backbone) else dict(getattr(model, PRERNN_BUILDER))


@torch.no_grad()
def check_output(model: torch.nn.Module, frame_shape, num_classes: int, backbone: str) -> None:
    """The module maps frames (N, *frame_shape) to one tensor (N, num_classes); OwnModelError saying what it
    returned. Runs it once in eval mode on zeros (no random numbers drawn)."""
    was_training = model.training
    out = model.eval()(torch.zeros(2, *frame_shape))
    model.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise OwnModelError(f"pretrain.backbone: {backbone!r}: the module returns a {type(out).__name__}; the "
                            "pipeline trains one output (N, num_classes): let the builder return a module whose "
                            "forward gives the head to train")
    if tuple(out.shape) != (2, num_classes):
        raise OwnModelError(f"pretrain.backbone: {backbone!r}: the module maps frames {tuple(frame_shape)} to "
                            f"{tuple(out.shape[1:])}; the task needs ({num_classes},) per frame (num_classes: the "
                            "classes, or 2 x the landmarks)")

"""Load trained weights into a Backbone from a local state_dict file (no pickled code runs).

Accepts our own names (``stages.*``), our checkpoint format ``{"config", "state_dict", "meta"}``, or
torchvision names: VGG16 ``features.N.*`` / ``classifier.{0,3,6}.*`` and ResNet-18
``conv1``, ``bn1``, ``layer1..4``, ``fc``.
"""
from __future__ import annotations

import os

import torch

from .backbones import Backbone


def _translate(model: Backbone, sd: dict) -> dict:
    if any(k.startswith("stages.") for k in sd):
        return dict(sd)
    prefixes = model.torchvision_prefixes
    out, unknown = {}, []
    for k, v in sd.items():
        for tv, ours in prefixes:
            if k.startswith(tv):
                out[ours + k[len(tv):]] = v
                break
        else:
            unknown.append(k)
            out[k] = v  # reported as unexpected below
    return out


def _adapt_first_conv(model: Backbone, sd: dict, own: dict) -> None:
    """Cross-modality init: average the first conv's RGB filters over input channels and replicate them
    to the model's ``in_channels`` (e.g. 1-channel depth) when only that dimension differs."""
    key = next((k for k, v in own.items() if k.endswith("weight") and v.dim() in (4, 5)), None)
    if key is None or key not in sd:
        return
    w, want = sd[key], own[key]
    if w.shape != want.shape and w.dim() == want.dim() and w.shape[0] == want.shape[0] \
            and w.shape[2:] == want.shape[2:]:
        sd[key] = w.mean(1, keepdim=True).expand(-1, want.shape[1], *w.shape[2:]).clone() * (w.shape[1] / want.shape[1])


def load_pretrained(model: Backbone, path, *, strict_classifier: bool = True,
                    adapt_in_channels: bool = True) -> Backbone:
    """Load the state_dict at ``path`` into ``model`` (in place; returns it).

    ``torch.load(path, weights_only=True)``; torchvision VGG16 / ResNet-18 names are mapped to ours.
    With ``strict_classifier=False`` classifier weights whose shape differs (other num_classes) or that are
    absent are skipped, keeping the model's fresh classifier. With ``adapt_in_channels`` a first conv trained on
    another number of input channels (RGB -> depth / flow) is averaged over channels and replicated (scaled to
    keep the response to a constant input). Raises ValueError naming missing keys,
    unexpected keys and mismatched shapes.
    """
    if not isinstance(model, Backbone):
        raise ValueError(f"load_pretrained expects a prernn Backbone, got {type(model).__name__}")
    if not os.path.isfile(path):
        raise ValueError(f"weights file {str(path)!r} does not exist")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses pickled code / unknown globals
        raise ValueError(f"cannot load {str(path)!r} as plain tensors (torch.load weights_only=True): {e}") from e
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ValueError(f"{str(path)!r} does not hold a state_dict (got {type(sd).__name__})")
    sd = _translate(model, sd)
    own = model.state_dict()
    if adapt_in_channels:
        _adapt_first_conv(model, sd, own)
    is_cls = lambda k: k.startswith("stages.classifier.")  # noqa: E731
    mismatched = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in sd.items() if k in own and tuple(v.shape) != tuple(own[k].shape)
                  and not (not strict_classifier and is_cls(k))]
    missing = [k for k in own if k not in sd and not (not strict_classifier and is_cls(k))]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected or mismatched:
        raise ValueError(
            f"state_dict in {str(path)!r} does not fit backbone {model.config['name']!r}: "
            f"missing keys {missing}; unexpected keys {unexpected}; mismatched shapes {mismatched}")
    load = {k: v for k, v in sd.items()
            if not (is_cls(k) and not strict_classifier and tuple(v.shape) != tuple(own[k].shape))}
    model.load_state_dict(load, strict=False)
    return model

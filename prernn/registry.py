"""Backbone registry (timm-style): a plain dict filled by the ``@register_backbone`` decorator."""
from __future__ import annotations

import inspect
from typing import Callable

_BACKBONES: dict[str, Callable] = {}


def register_backbone(fn: Callable) -> Callable:
    """Register a builder ``fn(num_classes, in_channels=3, **kw) -> Backbone`` under ``fn.__name__``."""
    name = fn.__name__
    if name in _BACKBONES:
        raise ValueError(f"backbone {name!r} is already registered")
    _BACKBONES[name] = fn
    return fn


def list_backbones() -> list[str]:
    """Names of all registered backbones, sorted."""
    return sorted(_BACKBONES)


def backbone_options(name: str) -> set[str]:
    """The keyword options the builder of backbone ``name`` takes beyond (num_classes, in_channels), e.g.
    {"input_size", "width", "dropout"} for vgg_mini; ValueError for an unknown name."""
    if name not in _BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; expected one of {list_backbones()}")
    params = inspect.signature(_BACKBONES[name]).parameters.values()
    return {p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def create_backbone(name: str, num_classes: int, in_channels: int = 3, **kw):
    """Build the registered backbone ``name`` (randomly initialised) -> ``Backbone``.

    Raises ValueError naming the registered backbones when ``name`` is unknown.
    """
    if name not in _BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; expected one of {list_backbones()}")
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes!r}")
    return _BACKBONES[name](int(num_classes), int(in_channels), **kw)

"""ModelConfig: what a SequenceModel is built from, with its defaults written once.

``convert`` (kind "prernn"), ``traditional`` and ``frame_model`` (kind "frames") each create one;
``build_from_config`` reads one back. ``to_dict()`` is ``SequenceModel.config``, the plain mapping checkpoints
store (``torch.load(weights_only=True)`` reads it; its keys and their order are those of the files written before
this class existed); ``from_dict`` reads such a mapping, or a search trial's configuration (extra keys ignored).
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Optional

KINDS = ("prernn", "traditional", "frames")
# keys a kind's mapping must have (the rest take the defaults below), and the keys its mapping leaves out
_REQUIRED = {"prernn": ("layers", "cell"), "traditional": ("cell",), "frames": ()}
_NOT_STORED = {"prernn": ("num_layers", "hidden_size"), "traditional": (),
               "frames": ("num_layers", "hidden_size", "hh_init", "gru_reset")}


@dataclass(frozen=True)
class ModelConfig:
    """One SequenceModel: which layers of which trained backbone are recurrent, with which cell."""

    kind: str                                          # "prernn", "traditional" or "frames" (KINDS)
    backbone: Optional[dict] = field(default_factory=dict)  # the Backbone's config (name, num_classes, ...) or a
                                                       # user module's builder spec (None: not rebuildable)
    layers: list = field(default_factory=list)         # prernn: the converted layers, in forward order
    cell: Optional[str] = None                         # "vrnn", "lstm" or "gru"; None for frames
    sih: bool = False                                  # single input-to-hidden state, Eqs. (10)-(12)
    num_layers: int = 1                                # traditional: RNN layers on top (1 or 2)
    hidden_size: Optional[int] = None                  # traditional: None = the last feature layer's width
    hh_init: str = "orthogonal"                        # hidden-to-hidden initialisation (prernn.HH_INITS)
    gru_reset: str = "before"                          # where a GRU applies its reset gate (prernn.GRU_RESETS)
    candidates: list = field(default_factory=list)     # the backbone's candidate layers
    trunk_boundary: Optional[str] = None               # the first stage above the cacheable per-frame trunk

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown config kind {self.kind!r}; expected one of {list(KINDS)}")

    def to_dict(self) -> dict:
        """The plain mapping of ``SequenceModel.config`` and the checkpoints (a copy; only the kind's keys)."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self)
                if f.name not in _NOT_STORED[self.kind]}

    @classmethod
    def from_dict(cls, config: dict) -> "ModelConfig":
        """A stored config or a trial configuration -> ModelConfig; ValueError for an unknown kind or a missing
        key (naming the keys given). Keys that are not fields (a trial's epochs, lr, ...) are ignored."""
        if not isinstance(config, dict):
            raise ValueError(f"config must be a dict, got {type(config).__name__}")
        kind = config.get("kind")
        if kind not in KINDS:
            raise ValueError(f"unknown config kind {kind!r}; expected one of {list(KINDS)}")
        missing = [k for k in _REQUIRED[kind] if k not in config]
        if missing:
            raise ValueError(f"{kind} config is missing keys {missing}; got keys {sorted(config)}")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: copy.deepcopy(v) for k, v in config.items() if k in names})

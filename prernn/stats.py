"""Gate activation statistics and the saturation rule used to select layers (claims 11, 12; [0054]-[0062]).

A gate unit is left saturated when its activation < low (0.1), right saturated when > high (0.9).
Claim 12 counts activations: saturated when fewer lie inside (low, high) than outside. Which gates are counted
(`is_saturated(..., gates=)`):
- "embodiment" ([0055]-[0058], [0060]-[0062]): the gates the patent judges a layer by. PreLSTM: the forget gate
  (FIG. 2A plots its units; [0056] reads right-saturated forget units as memory that lasts, [0057] the units near
  the origin as a layer that "virtually functions in a feedforward fashion"). PreGRU: the reset gate and the
  update gate, each on its own: [0060] keeps the layer whose saturated bins "dominate the distribution of both
  the reset gate and update gate", [0062] reverts the one where both gather in the centre; a layer with one
  saturated and one unsaturated gate is not saturated (the patent keeps only the first case).
- "all": claim 12 over every gate activation of the layer pooled (LSTM input, forget and output; GRU reset and
  update).
A VRNN layer has no gates ([0058]: "the gating mechanism may be inferred through saturation plots for LSTM or by
activation histograms for GRU"; nothing is said of a VRNN): it cannot be judged (None) under either rule.
"""
from __future__ import annotations

import torch

from .cells import GATE_NAMES

SELECT_GATES = ("embodiment", "all")
EMBODIMENT_GATES = {"vrnn": (), "lstm": ("forget",), "gru": ("reset", "update")}  # [0055]-[0058], [0060]-[0062]

VRNN_NOTE = "VRNN has no gates; gate saturation is undefined for this layer"


def _batches(clips):
    if isinstance(clips, torch.Tensor):
        yield clips
        return
    for item in clips:
        yield item[0] if isinstance(item, (tuple, list)) else item


def gate_statistics(model, clips, start=None, low: float = 0.1, high: float = 0.9) -> dict:
    """Gate activation statistics of every recurrent layer of a SequenceModel.

    clips: a tensor (B, T, ...) or an iterable of such tensors (or of (x, label) pairs); with ``start`` they
    are the features entering that stage. Computed in eval mode under no_grad, over all time steps and clips.
    Returns ``{layer: {"cell", "gates": {gate: {"left": [H], "right": [H], "hist": [10], "inside", "outside"}},
    "note", "low", "high"}}`` (JSON-able). VRNN layers: ``"gates": {}`` and a note.
    """
    if not 0.0 <= low < high <= 1.0:
        raise ValueError(f"need 0 <= low < high <= 1, got low={low!r}, high={high!r}")
    layers = model.recurrent_layers()
    acc = {name: {} for name in layers}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            dev = next(model.parameters()).device
            for x in _batches(clips):
                _, gates = model.forward_reference(x.to(dev), start=start, record=True)
                for name, g in gates.items():
                    for gate, a in g.items():  # (B, T, H)
                        a = a.reshape(-1, a.shape[-1]).double()
                        s = acc[name].setdefault(gate, {"left": 0, "right": 0, "n": 0, "hist": 0, "inside": 0})
                        s["left"] = s["left"] + (a < low).sum(0)
                        s["right"] = s["right"] + (a > high).sum(0)
                        s["n"] += a.shape[0]
                        s["hist"] = s["hist"] + torch.histc(a.float(), bins=10, min=0.0, max=1.0).double()
                        s["inside"] += int(((a > low) & (a < high)).sum())
    finally:
        model.train(was_training)
    out = {}
    for name, layer in layers.items():
        cell = layer.cell
        entry = {"cell": cell, "gates": {}, "note": None, "low": float(low), "high": float(high)}
        if cell == "vrnn":
            entry["note"] = VRNN_NOTE
        for gate in GATE_NAMES[cell]:
            s = acc[name].get(gate)
            if s is None or s["n"] == 0:
                entry["note"] = "no time steps were seen"
                continue
            total = s["n"] * layer.hidden_size
            entry["gates"][gate] = {
                "left": (s["left"] / s["n"]).tolist(),
                "right": (s["right"] / s["n"]).tolist(),
                "hist": [int(round(v)) for v in s["hist"].tolist()],
                "inside": int(s["inside"]),
                "outside": int(total - s["inside"]),
            }
        out[name] = entry
    return out


def deciding_gates(cell: str, gates: str = "all") -> tuple[str, ...]:
    """The gates whose activations decide a `cell` layer's saturation under rule `gates` (module docstring):
    "embodiment" -> EMBODIMENT_GATES[cell] (lstm: forget; gru: reset, update), "all" -> GATE_NAMES[cell]."""
    if gates not in SELECT_GATES:
        raise ValueError(f"gates must be one of {list(SELECT_GATES)}, got {gates!r}")
    if cell not in GATE_NAMES:
        raise ValueError(f"unknown cell {cell!r}; expected one of {list(GATE_NAMES)}")
    return EMBODIMENT_GATES[cell] if gates == "embodiment" else GATE_NAMES[cell]


def _cell_of(recorded: dict) -> str | None:
    """The cell whose gates include every recorded gate (stats written without a "cell" entry); None if none."""
    return next((c for c, names in GATE_NAMES.items() if recorded and set(recorded) <= set(names)), None)


def _claim12(counts) -> bool:
    """Claim 12 on (inside, outside) pairs pooled: fewer inside (low, high) than outside; a tie is not saturated."""
    inside = sum(int(g["inside"]) for g in counts)
    outside = sum(int(g["outside"]) for g in counts)
    return inside < outside


def is_saturated(layer_stats: dict, low: float = 0.1, high: float = 0.9, gates: str = "all"):
    """Claim 12 on one layer of `gate_statistics`: True (saturated: keep it recurrent), False (revert it) or None
    (a layer without gates, VRNN).

    gates "all": fewer activations pooled over the layer's gates lie inside (low, high) than outside.
    gates "embodiment": claim 12 holds for each of the cell's deciding gates on its own (`deciding_gates`: the
    LSTM forget gate; the GRU reset and update gates). A tie is not saturated. A deciding gate without
    statistics (no time steps seen) cannot show saturation: False. Without a "cell" entry the cell is the one
    whose gates the recorded ones are (`_cell_of`). Uses the stored inside/outside counts; raises ValueError if the stats
    were computed with other thresholds than ``low``/``high`` (when the stats record them).
    """
    if gates not in SELECT_GATES:
        raise ValueError(f"gates must be one of {list(SELECT_GATES)}, got {gates!r}")
    recorded = layer_stats.get("gates") or {}
    cell = layer_stats.get("cell") or _cell_of(recorded)
    names = deciding_gates(cell, gates) if cell is not None else ()
    if not names:
        return None
    for key, want in (("low", low), ("high", high)):
        if key in layer_stats and abs(float(layer_stats[key]) - float(want)) > 1e-12:
            raise ValueError(f"stats were computed with {key}={layer_stats[key]!r}, asked for {key}={want!r}")
    if any(g not in recorded for g in names):
        return False
    if gates == "all":
        return _claim12([recorded[g] for g in names])
    return all(_claim12([recorded[g]]) for g in names)

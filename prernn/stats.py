"""Gate activation statistics and the saturation rule used to select layers (claims 11, 12; [0054]-[0062]).

A gate unit is left saturated when its activation < low (0.1), right saturated when > high (0.9).
A layer is saturated when fewer of its gate activations lie inside (low, high) than outside (claim 12).
"""
from __future__ import annotations

import torch

from .cells import GATE_NAMES

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


def is_saturated(layer_stats: dict, low: float = 0.1, high: float = 0.9):
    """Claim 12: True when fewer activations (pooled over the layer's gates) lie inside (low, high) than
    outside; a tie is not saturated; None for a layer without gates (VRNN).

    Uses the stored inside/outside counts; raises ValueError if the stats were computed with other
    thresholds than ``low``/``high`` (when the stats record them).
    """
    gates = layer_stats.get("gates") or {}
    if not gates:
        return None
    for key, want in (("low", low), ("high", high)):
        if key in layer_stats and abs(float(layer_stats[key]) - float(want)) > 1e-12:
            raise ValueError(f"stats were computed with {key}={layer_stats[key]!r}, asked for {key}={want!r}")
    inside = sum(int(g["inside"]) for g in gates.values())
    outside = sum(int(g["outside"]) for g in gates.values())
    return inside < outside

"""Crafted search trials (contract trial keys) for the select/report tests: gate statistics with
chosen counts inside / outside (low, high), so each test knows which layers must be saturated."""
from __future__ import annotations

import numpy as np

GATES = {"lstm": ("input", "forget", "output"), "gru": ("reset", "update"), "vrnn": ()}


def gate(inside: int, outside: int, *, units: int = 6, steps: int = 10, seed: int = 0) -> dict:
    """One gate's statistics with exactly `inside` activations in (0.1, 0.9) and `outside` outside."""
    rng = np.random.default_rng(seed)
    total = inside + outside
    hist = np.zeros(10, dtype=int)
    hist[1:9] = np.bincount(rng.integers(1, 9, inside), minlength=9)[1:9] if inside else 0
    left = outside // 2
    hist[0], hist[9] = left, outside - left
    frac_out = outside / total if total else 0.0
    lefts = rng.uniform(0, frac_out, units)
    return {"left": lefts.round(3).tolist(), "right": (frac_out - lefts).round(3).tolist(),
            "hist": hist.tolist(), "inside": int(inside), "outside": int(outside)}


def layer(cell: str, inside: int, outside: int, *, per_gate: dict | None = None) -> dict:
    """A layer's gate_statistics entry; every gate gets (inside, outside) unless per_gate overrides it."""
    gates = {g: gate(*(per_gate or {}).get(g, (inside, outside)), seed=i) for i, g in enumerate(GATES[cell])}
    return {"cell": cell, "gates": gates, "note": None if gates else "vrnn: no gates"}


def trial(name: str, *, kind="prernn", cell="lstm", sih=False, layers=(), num_layers=None, status="ok",
          val_acc=0.5, stats=None, params=1000, error=None) -> dict:
    layers = list(layers)
    return {
        "name": name, "kind": kind, "cell": cell, "sih": sih, "layers": layers,
        "num_layers": num_layers if num_layers is not None else max(len(layers), 1),
        "status": status, "error": error if status != "ok" else None,
        "val_acc": val_acc if status == "ok" else None, "val_loss": 1.0 if status == "ok" else None,
        "epochs_to_95": 3 if status == "ok" else None, "clips_per_sec": 100.0,
        "recurrent_params": params, "mlflow_run_id": None, "gate_stats": stats or {}, "history": [],
        "config": {"kind": kind, "cell": cell, "sih": sih, "layers": layers},
    }


def space() -> list[dict]:
    """A full crafted space: 3 cells x (traditional 1/2, PreRNN fc6/fc7/fc6+fc7, SIH for lstm/gru)."""
    sat, unsat = (2, 8), (8, 2)
    out = []
    for cell in ("vrnn", "lstm", "gru"):
        for n in (1, 2):
            out.append(trial(f"traditional-{cell}-{n}", kind="traditional", cell=cell, num_layers=n, val_acc=0.4 + n / 100,
                             stats={f"rnn{i + 1}": layer(cell, *unsat) for i in range(n)}, params=5000 * n))
        for sih in ((False, True) if cell != "vrnn" else (False,)):
            for combo in (["fc6"], ["fc7"], ["fc6", "fc7"]):
                s = {"fc6": layer(cell, *sat), "fc7": layer(cell, *unsat)}
                out.append(trial(f"prernn-{cell}{'-sih' if sih else ''}-{'+'.join(combo)}", cell=cell, sih=sih,
                                 layers=combo, val_acc=0.6 + len(combo) / 100 + (0.005 if sih else 0),
                                 stats={k: s[k] for k in combo}, params=(2000 if sih else 8000) * len(combo)))
    return out

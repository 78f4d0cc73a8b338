"""The configuration space of the search: which layers to make recurrent, with which cell.

In: the `search` params section and the candidate layers of the trained backbone
(`prernn.candidate_layers`). Out: a list of plain JSON-able "arch" dicts, one per trial:

    {"name": "prernn-lstm-sih-fc6+fc7", "kind": "prernn", "cell": "lstm", "sih": True,
     "layers": ["fc6", "fc7"], "num_layers": 2, "hidden_size": None}
    {"name": "traditional-gru-2", "kind": "traditional", "cell": "gru", "sih": False,
     "layers": [], "num_layers": 2, "hidden_size": None}

PreRNN trials ([0023]-[0028], [0054], [0064]): every cell x {gate-dependent, SIH} x layer combination; SIH (single
input-to-hidden state, [0052]-[0053]) needs gates, so it does not apply to the vanilla RNN. Traditional
baselines ([0033]): an RNN of 1 or 2 layers on top of the last feature layer, per cell.
For a VGG-style backbone (candidates fc6, fc7) the default is 3*3 + 2*3 + 3*2 = 21 trials.
"""
from __future__ import annotations

from itertools import combinations
from typing import Iterable, Optional, Sequence

GATED_CELLS = ("lstm", "gru")


class SpaceError(ValueError):
    """An impossible search space; the message names the params key."""


def layer_combinations(candidates: Sequence[str], layers: Optional[Iterable[Iterable[str]]] = None) -> list[list[str]]:
    """The layer sets to convert, each in forward order.

    `layers` None: every non-empty combination of `candidates` (fc6, fc7, fc6+fc7 for VGG).
    Otherwise each entry is checked against `candidates` (SpaceError naming `search.layers`).
    """
    candidates = list(candidates)
    if not candidates:
        raise SpaceError("the backbone has no candidate layers to make recurrent")
    if layers is None:
        return [list(c) for n in range(1, len(candidates) + 1) for c in combinations(candidates, n)]
    out: list[list[str]] = []
    for entry in layers:
        entry = list(entry)
        if not entry:
            raise SpaceError(f"search.layers: {entry!r}: an empty layer set; give at least one of {candidates}")
        unknown = [name for name in entry if name not in candidates]
        if unknown:
            raise SpaceError(
                f"search.layers: {entry!r}: {unknown} not candidate layers of the backbone; allowed: {candidates}"
            )
        if len(set(entry)) != len(entry):
            raise SpaceError(f"search.layers: {entry!r}: a layer is named twice")
        ordered = [name for name in candidates if name in entry]
        if ordered in out:
            raise SpaceError(f"search.layers: {entry!r}: listed twice")
        out.append(ordered)
    if not out:
        raise SpaceError("search.layers: []: no layer sets; use null for every combination")
    return out


def trial_name(kind: str, cell: str, sih: bool = False, layers: Sequence[str] = (), num_layers: int = 1) -> str:
    """`prernn-lstm-sih-fc6+fc7`, `prernn-gru-fc7`, `traditional-vrnn-2`."""
    if kind == "traditional":
        return f"traditional-{cell}-{num_layers}"
    return "-".join(["prernn", cell] + (["sih"] if sih else []) + ["+".join(layers)])


def build_space(search, candidates: Sequence[str]) -> list[dict]:
    """All trial "arch" dicts for the `search` params section (pipeline.params.SearchParams or a
    mapping with the same keys) and the backbone's candidate layers.
    """
    get = (lambda k: search[k]) if isinstance(search, dict) else (lambda k: getattr(search, k))
    cells, sihs, baselines = list(get("cells")), list(get("sih")), list(get("baselines"))
    if not cells:
        raise SpaceError("search.cells: []: give at least one of vrnn, lstm, gru")
    if not sihs:
        raise SpaceError("search.sih: []: give false, true or both")
    if sihs == [True] and "vrnn" in cells:
        raise SpaceError(
            "search.sih: [true]: SIH does not apply to vrnn (it has no gates); add false to search.sih "
            "or remove vrnn from search.cells"
        )
    combos = layer_combinations(candidates, get("layers"))
    prernn = [
        {"kind": "prernn", "cell": cell, "sih": sih, "layers": layers, "num_layers": len(layers), "hidden_size": None}
        for cell in cells
        for sih in sihs
        if not (sih and cell not in GATED_CELLS)
        for layers in combos
    ]
    traditional = [
        {"kind": "traditional", "cell": cell, "sih": False, "layers": [], "num_layers": int(n),
         "hidden_size": get("baseline_hidden_size")}
        for cell in cells
        for n in baselines
    ]
    space = [{"name": trial_name(**{k: a[k] for k in ("kind", "cell", "sih", "layers", "num_layers")}), **a}
             for a in prernn + traditional]
    names = [a["name"] for a in space]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SpaceError(f"search.cells / search.sih / search.baselines: trials {duplicates} are listed twice")
    return space

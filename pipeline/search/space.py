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
Layer combinations (`search.layers`): null, every non-empty combination of the backbone's default candidates
(`prernn.default_candidates`: fc6, fc7 for VGG / C3D; a ResNet's last block); `all`, every combination of all its
candidates, conv and fc together ([0065]); or a list of layer sets, any candidates. `search.max_layers` keeps only
combinations of at most that many layers (null: no bound): 31 combinations of 5 candidates become 15 with 2.
For a VGG-style backbone (default candidates fc6, fc7) the default is 3*3 + 2*3 + 3*2 = 21 trials.
"""
from __future__ import annotations

from itertools import combinations
from typing import Optional, Sequence

from pipeline.search.trial_config import Arch, arch, trial_name
from prernn import CELLS, GATED_CELLS, check_layers, sih_applies

__all__ = ["ALL", "SpaceError", "build_space", "layer_combinations", "space_problems", "trial_name"]


class SpaceError(ValueError):
    """An impossible search space; the message names the params key (one line per problem)."""


ALL = "all"


def _layer_sets(candidates: Sequence[str], layers, backbone: Optional[str] = None, defaults=None,
                max_layers: Optional[int] = None) -> tuple[list[list[str]], list[str]]:
    """(the layer sets in forward order, one problem line per bad `search.layers` entry); the rule for one set
    is the library's (`prernn.check_layers`). `backbone`: the pretrain.backbone name, for the messages;
    `defaults`: the candidates `layers: null` combines (None: all of them); `max_layers`: the largest set."""
    candidates = list(candidates)
    defaults = candidates if defaults is None else [c for c in candidates if c in set(defaults)]
    of = f" (pretrain.backbone {backbone!r})" if backbone else ""
    if not candidates:
        return [], [f"the backbone{of} has no candidate layers to make recurrent"]
    bound = int(max_layers) if max_layers is not None else len(candidates)
    if layers is None or layers == ALL:
        pool = defaults if layers is None else candidates
        return [list(c) for n in range(1, min(bound, len(pool)) + 1) for c in combinations(pool, n)], []
    if isinstance(layers, str):
        return [], [f"search.layers: {layers!r}: expected null, {ALL!r} or a list of layer sets"]
    out: list[list[str]] = []
    problems = []
    for i, entry in enumerate(layers):
        entry = list(entry)
        try:
            ordered = check_layers(entry, candidates)
        except ValueError as err:
            problems.append(f"search.layers.{i}: {entry!r}: {err}{of}")
            continue
        if ordered in out:
            problems.append(f"search.layers.{i}: {entry!r}: listed twice")
        elif len(ordered) > bound:
            problems.append(f"search.layers.{i}: {entry!r}: {len(ordered)} layers, more than search.max_layers "
                            f"{bound}; raise search.max_layers or drop the set")
        else:
            out.append(ordered)
    if not out and not problems:
        problems.append("search.layers: []: no layer sets; use null for every combination")
    return out, problems


def layer_combinations(candidates: Sequence[str], layers=None, *, defaults: Optional[Sequence[str]] = None,
                       max_layers: Optional[int] = None) -> list[list[str]]:
    """The layer sets to convert, each in forward order.

    `layers` None: every non-empty combination of `defaults` (None: of `candidates`; fc6, fc7, fc6+fc7 for VGG);
    "all": every combination of `candidates`; otherwise each entry is checked against `candidates`. Sets of more
    than `max_layers` layers are left out (None / "all") or refused (a listed set). SpaceError names `search.layers`.
    """
    out, problems = _layer_sets(candidates, layers, defaults=defaults, max_layers=max_layers)
    if problems:
        raise SpaceError("\n".join(problems))
    return out


def _getter(search):
    return (lambda k: search[k]) if isinstance(search, dict) else (lambda k: getattr(search, k))


def _max_layers(search):
    return search.get("max_layers") if isinstance(search, dict) else getattr(search, "max_layers", None)


def space_problems(search, candidates: Sequence[str], backbone: Optional[str] = None,
                   defaults: Optional[Sequence[str]] = None) -> list[str]:
    """Every reason the `search` section (SearchParams or a mapping) gives no valid space over the backbone's
    `candidates` (`defaults`: the ones `search.layers: null` combines; None: all), one line each naming the key;
    [] when it gives one. pipeline.checks calls this too, before any stage work."""
    get = _getter(search)
    cells, sihs, baselines = list(get("cells")), list(get("sih")), list(get("baselines"))
    problems = []
    if not cells:
        problems.append(f"search.cells: []: give at least one of {', '.join(CELLS)}")
    if not sihs:
        problems.append("search.sih: []: give false, true or both")
    ungated = [c for c in cells if not sih_applies(c)]
    if sihs == [True] and ungated:
        gated = [c for c in cells if sih_applies(c)]
        problems.append(
            f"search.sih: [True] with search.cells {cells}: SIH needs a gated cell ({', '.join(GATED_CELLS)}) and "
            f"{', '.join(ungated)} has no gates, so no "
            + ("trial" if not gated and not baselines else f"{', '.join(ungated)} PreRNN trial")
            + f" is possible; add false to search.sih or remove {', '.join(ungated)} from search.cells")
    for key, values in (("cells", cells), ("sih", sihs), ("baselines", baselines)):
        twice = sorted({v for v in values if values.count(v) > 1}, key=str)
        if twice:
            problems.append(f"search.{key}: {values}: {twice} listed twice (each trial would run twice)")
    problems += _layer_sets(candidates, get("layers"), backbone, defaults, _max_layers(search))[1]
    return problems


def build_space(search, candidates: Sequence[str], defaults: Optional[Sequence[str]] = None) -> list[Arch]:
    """All trial "arch" dicts for the `search` params section (pipeline.core.params.SearchParams or a
    mapping with the same keys) and the backbone's candidate layers (`prernn.candidate_layers`; `defaults`:
    `prernn.default_candidates`, None: all of them); SpaceError lists `space_problems`.
    """
    problems = space_problems(search, candidates, defaults=defaults)
    if problems:
        raise SpaceError("\n".join(problems))
    get = _getter(search)
    cells, sihs, baselines = list(get("cells")), list(get("sih")), list(get("baselines"))
    combos = layer_combinations(candidates, get("layers"), defaults=defaults, max_layers=_max_layers(search))
    prernn = [
        arch("prernn", cell, sih, layers, len(layers))
        for cell in cells
        for sih in sihs
        if sih_applies(cell) or not sih
        for layers in combos
    ]
    traditional = [arch("traditional", cell, False, [], int(n), get("baseline_hidden_size"))
                   for cell in cells for n in baselines]
    return prernn + traditional


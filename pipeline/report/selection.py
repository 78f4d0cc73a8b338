"""Claim 12 applied to the search's trials: which converted layers keep their recurrence.

In: one dict per configuration (`pipeline.report.seeds.aggregate` of `search/trials.json`: the metric is the mean over
seeds, gate statistics pooled over seeds; a plain trial list works as one seed each), the saturation thresholds
(`select.low`, `select.high`), the gates that decide (`select.gates`), the validation metric to rank by
(`select.metric`, `select.mode`) and the trained CNN's own score on the val clips (`frame_reference`, search.json).
Out: `select_configuration(...) -> dict`, the content of `reports/selection.json`:

    {"metric", "mode", "low", "high", "gates", "rule", "tie_break", "scoring",
     "selected": {"name", "trial", "kind", "cell", "sih", "layers", "reverted_layers", "num_layers",
                  "score", "searched_score", "scored_as", "fallback", "reason", "config"} | None,
     "no_selection": why nothing was selected | None,
     "baseline": the same for the best traditional RNN | None,
     "trials": [{"name", "kind", "cell", "sih", "layers", "status", "decision", "reason", "score",
                 "searched_score", "scored_as", "effective_layers", "reverted_layers",
                 "decided_by": {layer: [gate, ...]}, "saturation": {layer: {...}}}]}

Rule, per trial (patent [0054]-[0062], claim 12; `prernn.is_saturated`):
- `status != "ok"` -> decision "failed"; its error is the reason, it never gets a score.
- traditional trials -> "baseline": not subject to the rule, the comparison of Table 1.
- a PreRNN trial's converted layer is *saturated* when fewer of the deciding gates' activations fall inside
  (low, high) than outside (a tie is *not* saturated). `select.gates: embodiment` (default): a PreLSTM layer is
  judged by its forget gate ([0055]-[0058], FIG. 2A), a PreGRU layer by its reset gate and its update gate, each
  of which must be saturated ([0060]-[0062], FIG. 2B/2C). `select.gates: all`: pooled over every gate of the
  layer (LSTM input, forget, output; GRU reset, update). `decided_by` names the gates per layer.
  Every converted layer saturated -> "kept". Otherwise -> "reverted": the unsaturated layers go
  back to their feedforward form ([0058]); `effective_layers` are the saturated ones that stay
  recurrent (possibly none: the plain backbone applied frame by frame).
- a layer without gates (VRNN) cannot be judged by saturation (`is_saturated` is None) under either rule: it
  stays recurrent, and a trial whose layers are all of that kind is "kept" with the reason
  "no gates: kept by validation score".
- a layer with no gate statistics recorded cannot show saturation, so it is reverted.

Scores ("scoring"): a kept trial scores its own metric (what `evaluate` retrains is that configuration). A
reverted trial scores its *reverted form*, the model `evaluate` trains for it (`searched_score` keeps the
unreverted model's): the configuration of the same search with only `effective_layers` converted and every other
setting alike (same cell, SIH, seeds and trial config) when the search has it, that configuration's mean over seeds
(`scored_as.configuration` names it); with no layer left, the trained CNN alone per frame on the same val clips
(`frame_reference`; `scored_as.configuration` "frames"); otherwise it is not scored (`score` None, the reason
says which `search.layers` entry would score it) and cannot be selected.

The selected configuration is the best "kept" trial by the metric (ties: fewer recurrent
parameters of the model evaluate trains, then name). When no trial is kept, the best scored "reverted" trial is
selected with its reverted layers (`fallback: true`). When no PreRNN trial can be selected, `selected` is None and
`no_selection` says why.
"""
from __future__ import annotations

import json
import math
from typing import Any, Iterable

from prernn import deciding_gates, is_saturated

RULES = {
    "embodiment": (
        "claim 12 on the gates the patent judges: a PreLSTM layer is kept recurrent when fewer of its forget gate "
        "activations lie inside (low, high) than outside ([0055]-[0058]), a PreGRU layer when that holds for its "
        "reset gate and for its update gate ([0060]-[0062]); a tie is not saturated; unsaturated layers revert to "
        "their feedforward form ([0058]); layers without gates (VRNN) are kept by validation score"),
    "all": (
        "claim 12: a converted layer is kept recurrent when fewer of its gate activations lie inside "
        "(low, high) than outside, pooled over all its gates (a tie is not saturated); unsaturated layers revert "
        "to their feedforward form ([0058]); layers without gates (VRNN) are kept by validation score"),
}
SCORING = ("a kept configuration is ranked by its own score; a reverted one by the score of its reverted form, the "
           "model evaluate trains: the same search's configuration with only the saturated layers converted "
           "(scored_as.configuration), or with none left the trained CNN alone per frame (frames)")
NO_GATES = "no gates: kept by validation score"
TIE_BREAK = "equal scores: fewer recurrent parameters first, then the trial name in alphabetical order"


class SelectionError(ValueError):
    """A trials list that the selection cannot read (missing keys, unknown metric, wrong thresholds, rule)."""


def _rule(gates: str) -> str:
    if gates not in RULES:
        raise SelectionError(f"select.gates: {gates!r}; expected one of {', '.join(RULES)}")
    return RULES[gates]


def _deciding(cell: str | None, recorded: dict, gates: str) -> list[str]:
    """The gates of a layer that decide it under `gates` (`prernn.deciding_gates`; cell unknown: the recorded ones)."""
    return list(deciding_gates(cell, gates)) if cell else list(recorded)


def layer_saturation(layer_stats: dict | None, low: float, high: float, gates: str = "embodiment") -> dict:
    """One layer's gate_statistics entry -> {"saturated", "decided_by": [gate], "inside", "outside",
    "inside_fraction", "outside_fraction" (over the deciding gates), "gates": {gate: {"inside", "outside",
    "inside_fraction", "saturated" (claim 12 on that gate alone)}}, "cell", "note"}."""
    _rule(gates)
    if layer_stats is None:
        return {"saturated": False, "decided_by": [], "inside": 0, "outside": 0, "inside_fraction": None,
                "outside_fraction": None, "gates": {}, "cell": None, "note": "no gate statistics recorded"}
    for key, want in (("low", low), ("high", high)):
        if key in layer_stats and not math.isclose(float(layer_stats[key]), want):
            raise SelectionError(
                f"gate statistics were recorded with {key}={layer_stats[key]} but select.{key} is {want}: "
                "set select.low/high to the search's thresholds or rerun the search"
            )
    recorded = layer_stats.get("gates") or {}
    per_gate = {}
    for gate, g in recorded.items():
        i, o = int(g["inside"]), int(g["outside"])
        per_gate[gate] = {"inside": i, "outside": o, "inside_fraction": i / (i + o) if i + o else None,
                          "saturated": i < o}
    saturated = is_saturated(layer_stats, low=low, high=high, gates=gates)
    decided_by = [] if saturated is None else _deciding(layer_stats.get("cell"), recorded, gates)
    inside = sum(per_gate[g]["inside"] for g in decided_by if g in per_gate)
    outside = sum(per_gate[g]["outside"] for g in decided_by if g in per_gate)
    total = inside + outside
    return {
        "saturated": saturated,
        "decided_by": decided_by,
        "inside": inside,
        "outside": outside,
        "inside_fraction": inside / total if total else None,
        "outside_fraction": outside / total if total else None,
        "gates": per_gate,
        "cell": layer_stats.get("cell"),
        "note": layer_stats.get("note"),
    }


def _score(trial: dict, metric: str) -> float | None:
    value = trial.get(metric)
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _why(layer: str, sat: dict, low: float, high: float, gates: str) -> str:
    """`fc7: 58.2% of forget gate activations inside (0.1, 0.9)`; several deciding gates judged one by one
    (GRU, embodiment): each gate's fraction."""
    names = sat["decided_by"]
    if sat["inside_fraction"] is None or not names:
        return f"{layer}: {sat['note'] or 'no gate activations'}"
    missing = [g for g in names if g not in sat["gates"]]
    if missing:
        return f"{layer}: no {'/'.join(missing)} gate activations recorded"
    if len(names) == 1 or gates == "all":
        return f"{layer}: {sat['inside_fraction']:.1%} of {'/'.join(names)} gate activations inside ({low}, {high})"
    each = ", ".join(f"{g} {sat['gates'][g]['inside_fraction']:.1%}" for g in names)
    return f"{layer}: gate activations inside ({low}, {high}): {each} (each must be below 50%)"


def judge_trial(trial: dict, *, low: float, high: float, metric: str, gates: str = "embodiment") -> dict:
    """Apply the rule to one trial dict; return its row of `selection.json["trials"]` (score: its own metric;
    `select_configuration` rescores reverted rows by their reverted form)."""
    for key in ("name", "kind", "status"):
        if key not in trial:
            raise SelectionError(f"trial {trial.get('name', '?')!r}: missing key {key!r} (contract trial keys)")
    layers = list(trial.get("layers") or [])
    row = {
        "name": trial["name"], "kind": trial["kind"], "cell": trial.get("cell"), "sih": bool(trial.get("sih")),
        "layers": layers, "num_layers": trial.get("num_layers"), "status": trial["status"],
        "score": None, "searched_score": None, "scored_as": None, "effective_layers": layers,
        "reverted_layers": [], "decided_by": {}, "saturation": {},
        "recurrent_params": trial.get("recurrent_params"),
        "interval": trial.get(f"{metric}_interval"), "per_seed": trial.get("per_seed"),
    }
    if trial["status"] != "ok":
        return {**row, "decision": "failed", "effective_layers": [], "reason": f"failed: {trial.get('error') or 'no error recorded'}"}
    row["score"] = row["searched_score"] = _score(trial, metric)
    stats = trial.get("gate_stats") or {}

    def judged(layer_names):
        sat = {name: layer_saturation(stats.get(name), low, high, gates) for name in layer_names}
        return sat, {name: s["decided_by"] for name, s in sat.items()}

    if trial["kind"] == "traditional":
        row["saturation"], row["decided_by"] = judged(stats)
        return {**row, "decision": "baseline", "effective_layers": [],
                "reason": "traditional RNN baseline: not subject to the saturation rule"}
    if trial["kind"] != "prernn":
        raise SelectionError(f"trial {trial['name']!r}: kind {trial['kind']!r}; expected 'prernn' or 'traditional'")
    if not layers:
        raise SelectionError(f"trial {trial['name']!r}: a prernn trial must name its converted layers")
    if row["score"] is None:
        return {**row, "decision": "failed", "effective_layers": [],
                "reason": f"failed: trial finished without a {metric!r} value"}
    sat, row["decided_by"] = judged(layers)
    row["saturation"] = sat
    reverted = [layer for layer in layers if sat[layer]["saturated"] is False]
    ungated = [layer for layer in layers if sat[layer]["saturated"] is None]
    kept = [layer for layer in layers if layer not in reverted]
    if reverted:
        reason = "not saturated, reverted to feedforward: " + "; ".join(_why(x, sat[x], low, high, gates) for x in reverted)
        reason += f"; recurrent kept: {'+'.join(kept) if kept else 'none (plain backbone over time)'}"
        return {**row, "decision": "reverted", "effective_layers": kept, "reverted_layers": reverted, "reason": reason}
    if len(ungated) == len(layers):
        return {**row, "decision": "kept", "reason": NO_GATES}
    reason = "all converted layers saturated: " + "; ".join(_why(x, sat[x], low, high, gates) for x in layers if x not in ungated)
    if ungated:
        reason += f"; {', '.join(ungated)}: {NO_GATES}"
    return {**row, "decision": "kept", "reason": reason}


# trial config keys that differ between two configurations that convert different layers of the same search
LAYER_KEYS = ("name", "configuration", "layers", "num_layers", "seed")


def form_key(trial: dict, layers) -> str:
    """What identifies the model a PreRNN configuration trains, with its converted layers replaced by `layers`:
    kind, cell, SIH, the layers, the seeds and the trial config but for LAYER_KEYS (JSON text)."""
    config = {k: v for k, v in (trial.get("config") or {}).items() if k not in LAYER_KEYS}
    return json.dumps([trial["kind"], trial.get("cell"), bool(trial.get("sih")), list(layers),
                       [str(x) for x in trial.get("seeds") or []], config], sort_keys=True, default=str)


FRAMES_HOW = ("every converted layer reverted: the trained CNN alone, per frame, outputs averaged over the clip, on "
              "the search's val clips (search.json frame_reference)")
SAME_HOW = "the same search's configuration with only these layers converted, every other setting alike"


def score_reverted(row: dict, trial: dict, forms: dict[str, tuple[dict, dict]], metric: str,
                   frame_reference: float | None) -> dict:
    """A reverted row rescored by its reverted form (module docstring): `score`, `scored_as`, `interval`,
    `per_seed`, `recurrent_params` of that form; `searched_score` stays the trial's own."""
    layers = row["effective_layers"]
    if not layers:
        if frame_reference is None:
            return {**row, "score": None, "scored_as": None, "interval": None, "per_seed": None,
                    "reason": row["reason"] + f"; not ranked: no CNN-alone {metric} in search.json (frame_reference)"}
        return {**row, "score": float(frame_reference), "interval": None, "per_seed": None, "recurrent_params": 0,
                "scored_as": {"configuration": "frames", "layers": [], "score": float(frame_reference),
                              "how": FRAMES_HOW},
                "reason": row["reason"] + f"; ranked as the CNN alone per frame: {metric} {frame_reference:.3f}"}
    found = forms.get(form_key(trial, layers))
    if found is None:
        entry = "[" + ", ".join(layers) + "]"
        return {**row, "score": None, "scored_as": None, "interval": None, "per_seed": None,
                "reason": row["reason"] + f"; not ranked: its reverted form ({'+'.join(layers)} converted) is not in "
                                          f"the search; add {entry} to search.layers to score it"}
    form_trial, form_row = found
    if form_row["searched_score"] is None:
        return {**row, "score": None, "scored_as": None, "interval": None, "per_seed": None,
                "reason": row["reason"] + f"; not ranked: its reverted form {form_row['name']} has no {metric} "
                                          f"({form_row['reason']})"}
    score = form_row["searched_score"]
    return {**row, "score": score, "interval": form_trial.get(f"{metric}_interval"),
            "per_seed": form_trial.get("per_seed"), "recurrent_params": form_trial.get("recurrent_params"),
            "scored_as": {"configuration": form_row["name"], "layers": list(layers), "score": score, "how": SAME_HOW},
            "reason": row["reason"] + f"; ranked as {form_row['name']}: {metric} {score:.3f}"}


def _best(rows: Iterable[dict], mode: str) -> dict | None:
    rows = [r for r in rows if r["score"] is not None]
    if not rows:
        return None
    sign = -1.0 if mode == "max" else 1.0
    return min(rows, key=lambda r: (sign * r["score"], r.get("recurrent_params") or 0, r["name"]))


def _ties(rows: Iterable[dict], best: dict) -> list[str]:
    """The names of the rows whose score equals `best`'s (itself included), in name order."""
    return sorted(r["name"] for r in rows if r["score"] is not None and r["score"] == best["score"])


def _reason(text: str, rows: list[dict], best: dict) -> str:
    ties = _ties(rows, best)
    if len(ties) < 2:
        return text
    return f"{text}; {len(ties)} tied at {best['score']:.3f} ({', '.join(ties)}), {TIE_BREAK}"


def _choice(row: dict, trial: dict, *, fallback: bool, reason: str) -> dict:
    return {
        "name": row["name"], "trial": row["name"], "kind": row["kind"], "cell": row["cell"], "sih": row["sih"],
        "layers": row["effective_layers"] if row["kind"] == "prernn" else [],
        "searched_layers": row["layers"], "reverted_layers": row["reverted_layers"],
        "num_layers": row["num_layers"], "score": row["score"], "searched_score": row["searched_score"],
        "scored_as": row["scored_as"], "fallback": fallback, "reason": reason,
        "config": trial.get("config"), "seeds": trial.get("seeds") or [(trial.get("config") or {}).get("seed")],
        "interval": row.get("interval"), "per_seed": row.get("per_seed"),
    }


def select_configuration(trials: list[dict], *, metric: str, low: float = 0.1, high: float = 0.9,
                         mode: str = "max", gates: str = "embodiment",
                         frame_reference: float | None = None) -> dict:
    """Judge every trial and choose the configuration to evaluate (see the module docstring).

    `frame_reference`: the trained CNN alone on the val clips by `metric` (search.json `frame_reference`), the
    score of a configuration whose every converted layer reverts; None: such a configuration is not ranked."""
    rule = _rule(gates)
    if mode not in ("max", "min"):
        raise SelectionError(f"select.mode: {mode!r}; expected 'max' or 'min'")
    if not isinstance(trials, list) or not trials:
        raise SelectionError("trials: expected a non-empty list of trial dicts (search/trials.json)")
    ok = [t for t in trials if t.get("status") == "ok"]
    if ok and all(metric not in t for t in ok):
        keys = sorted({k for t in ok for k, v in t.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        raise SelectionError(f"select.metric: {metric!r} is in no successful trial; numeric keys: {', '.join(keys)}")
    rows = [judge_trial(t, low=low, high=high, metric=metric, gates=gates) for t in trials]
    by_name = {t["name"]: t for t in trials}
    forms = {form_key(t, t["layers"]): (t, r) for t, r in zip(trials, rows) if r["kind"] == "prernn"}
    rows = [score_reverted(r, by_name[r["name"]], forms, metric, frame_reference) if r["decision"] == "reverted"
            else r for r in rows]
    kept_rows = [r for r in rows if r["decision"] == "kept"]
    kept = _best(kept_rows, mode)
    no_selection = None
    if kept is not None:
        selected = _choice(kept, by_name[kept["name"]], fallback=False,
                           reason=_reason(f"best kept PreRNN configuration by {metric} ({mode})", kept_rows, kept))
    else:
        rev = _best((r for r in rows if r["decision"] == "reverted"), mode)
        selected = None if rev is None else _choice(
            rev, by_name[rev["name"]], fallback=True,
            reason=(f"no configuration had all its converted layers saturated; fallback: the best reverted "
                    f"configuration by the {metric} of its reverted form ({mode}), with its unsaturated layers "
                    f"({', '.join(rev['reverted_layers'])}) in feedforward form"))
        if selected is None:
            no_selection = ("no PreRNN configuration was kept and none of the reverted ones could be scored as "
                            "reverted (see their reasons)" if any(r["decision"] == "reverted" for r in rows)
                            else "no PreRNN trial succeeded")
    base_rows = [r for r in rows if r["decision"] == "baseline"]
    base = _best(base_rows, mode)
    baseline = None if base is None else _choice(
        base, by_name[base["name"]], fallback=False,
        reason=_reason(f"best traditional RNN by {metric} ({mode})", base_rows, base))
    if selected is not None:
        for r in rows:
            if r["name"] == selected["name"]:
                r["selected"] = True
    return {"metric": metric, "mode": mode, "low": low, "high": high, "gates": gates, "rule": rule,
            "tie_break": TIE_BREAK, "scoring": SCORING, "selected": selected, "no_selection": no_selection,
            "baseline": baseline,
            "counts": {d: sum(r["decision"] == d for r in rows) for d in ("kept", "reverted", "baseline", "failed")},
            "trials": rows}

"""Claim 12 applied to the search's trials: which converted layers keep their recurrence.

In: one dict per configuration (`pipeline.report.seeds.aggregate` of `search/trials.json`: the metric is the mean over
seeds, gate statistics pooled over seeds; a plain trial list works as one seed each), the saturation thresholds
(`select.low`, `select.high`) and the validation metric to rank by (`select.metric`, `select.mode`).
Out: `select_configuration(...) -> dict`, the content of `reports/selection.json`:

    {"metric", "mode", "low", "high", "rule", "tie_break",
     "selected": {"name", "trial", "kind", "cell", "sih", "layers", "reverted_layers", "num_layers",
                  "score", "fallback", "reason", "config"} | None,
     "baseline": the same for the best traditional RNN | None,
     "trials": [{"name", "kind", "cell", "sih", "layers", "status", "decision", "reason",
                 "score", "effective_layers", "reverted_layers", "saturation": {layer: {...}}}]}

Rule, per trial (patent [0054], [0058], claim 12):
- `status != "ok"` -> decision "failed"; its error is the reason, it never gets a score.
- traditional trials -> "baseline": not subject to the rule, the comparison of Table 1.
- a PreRNN trial's converted layer is *saturated* when, pooled over its gates, fewer activations
  fall inside (low, high) than outside (`prernn.is_saturated`; a tie is *not* saturated).
  Every converted layer saturated -> "kept". Otherwise -> "reverted": the unsaturated layers go
  back to their feedforward form ([0058]); `effective_layers` are the saturated ones that stay
  recurrent (possibly none: the plain backbone applied frame by frame).
- a layer without gates (VRNN) cannot be judged by saturation (`is_saturated` is None): it stays
  recurrent, and a trial whose layers are all of that kind is "kept" with the reason
  "no gates: kept by validation score".
- a layer with no gate statistics recorded cannot show saturation, so it is reverted.

The selected configuration is the best "kept" trial by the metric (ties: fewer recurrent
parameters, then name). When no trial is kept, the best "reverted" trial is selected with its
reverted layers (`fallback: true`). When no PreRNN trial succeeded, `selected` is None.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

RULE = (
    "claim 12: a converted layer is kept recurrent when fewer of its gate activations lie inside "
    "(low, high) than outside, pooled over its gates (a tie is not saturated); unsaturated layers revert "
    "to their feedforward form ([0058]); layers without gates (VRNN) are kept by validation score"
)
NO_GATES = "no gates: kept by validation score"
TIE_BREAK = "equal scores: fewer recurrent parameters first, then the trial name in alphabetical order"


class SelectionError(ValueError):
    """A trials list that the selection cannot read (missing keys, unknown metric, wrong thresholds)."""


def _is_saturated(layer_stats: dict, low: float, high: float) -> bool | None:
    from prernn import is_saturated  # the library owns the rule; imported late so this module imports without it

    return is_saturated(layer_stats, low=low, high=high)


def layer_saturation(layer_stats: dict | None, low: float, high: float) -> dict:
    """One layer's gate_statistics entry -> {"saturated", "inside", "outside", "inside_fraction",
    "outside_fraction", "gates": {gate: {"inside", "outside", "inside_fraction"}}, "cell", "note"}."""
    if layer_stats is None:
        return {"saturated": False, "inside": 0, "outside": 0, "inside_fraction": None,
                "outside_fraction": None, "gates": {}, "cell": None, "note": "no gate statistics recorded"}
    for key, want in (("low", low), ("high", high)):
        if key in layer_stats and not math.isclose(float(layer_stats[key]), want):
            raise SelectionError(
                f"gate statistics were recorded with {key}={layer_stats[key]} but select.{key} is {want}: "
                "set select.low/high to the search's thresholds or rerun the search"
            )
    gates = {}
    inside = outside = 0
    for gate, g in (layer_stats.get("gates") or {}).items():
        i, o = int(g["inside"]), int(g["outside"])
        inside, outside = inside + i, outside + o
        gates[gate] = {"inside": i, "outside": o, "inside_fraction": i / (i + o) if i + o else None}
    total = inside + outside
    return {
        "saturated": _is_saturated(layer_stats, low, high),
        "inside": inside,
        "outside": outside,
        "inside_fraction": inside / total if total else None,
        "outside_fraction": outside / total if total else None,
        "gates": gates,
        "cell": layer_stats.get("cell"),
        "note": layer_stats.get("note"),
    }


def _score(trial: dict, metric: str) -> float | None:
    value = trial.get(metric)
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def judge_trial(trial: dict, *, low: float, high: float, metric: str) -> dict:
    """Apply the rule to one trial dict; return its row of `selection.json["trials"]`."""
    for key in ("name", "kind", "status"):
        if key not in trial:
            raise SelectionError(f"trial {trial.get('name', '?')!r}: missing key {key!r} (contract trial keys)")
    layers = list(trial.get("layers") or [])
    row = {
        "name": trial["name"], "kind": trial["kind"], "cell": trial.get("cell"), "sih": bool(trial.get("sih")),
        "layers": layers, "num_layers": trial.get("num_layers"), "status": trial["status"],
        "score": None, "effective_layers": layers, "reverted_layers": [], "saturation": {},
        "recurrent_params": trial.get("recurrent_params"),
        "interval": trial.get(f"{metric}_interval"), "per_seed": trial.get("per_seed"),
    }
    if trial["status"] != "ok":
        return {**row, "decision": "failed", "effective_layers": [], "reason": f"failed: {trial.get('error') or 'no error recorded'}"}
    row["score"] = _score(trial, metric)
    stats = trial.get("gate_stats") or {}
    if trial["kind"] == "traditional":
        row["saturation"] = {name: layer_saturation(s, low, high) for name, s in stats.items()}
        return {**row, "decision": "baseline", "effective_layers": [],
                "reason": "traditional RNN baseline: not subject to the saturation rule"}
    if trial["kind"] != "prernn":
        raise SelectionError(f"trial {trial['name']!r}: kind {trial['kind']!r}; expected 'prernn' or 'traditional'")
    if not layers:
        raise SelectionError(f"trial {trial['name']!r}: a prernn trial must name its converted layers")
    if row["score"] is None:
        return {**row, "decision": "failed", "effective_layers": [],
                "reason": f"failed: trial finished without a {metric!r} value"}
    sat = {layer: layer_saturation(stats.get(layer), low, high) for layer in layers}
    row["saturation"] = sat
    reverted = [layer for layer in layers if sat[layer]["saturated"] is False]
    ungated = [layer for layer in layers if sat[layer]["saturated"] is None]
    kept = [layer for layer in layers if layer not in reverted]

    def _why(layer):
        s = sat[layer]
        if s["inside_fraction"] is None:
            return f"{layer}: {s['note'] or 'no gate activations'}"
        return f"{layer}: {s['inside_fraction']:.1%} of gate activations inside ({low}, {high})"

    if reverted:
        reason = "not saturated, reverted to feedforward: " + "; ".join(_why(x) for x in reverted)
        reason += f"; recurrent kept: {'+'.join(kept) if kept else 'none (plain backbone over time)'}"
        return {**row, "decision": "reverted", "effective_layers": kept, "reverted_layers": reverted, "reason": reason}
    if len(ungated) == len(layers):
        return {**row, "decision": "kept", "reason": NO_GATES}
    reason = "all converted layers saturated: " + "; ".join(_why(x) for x in layers if x not in ungated)
    if ungated:
        reason += f"; {', '.join(ungated)}: {NO_GATES}"
    return {**row, "decision": "kept", "reason": reason}


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
        "num_layers": row["num_layers"], "score": row["score"], "fallback": fallback, "reason": reason,
        "config": trial.get("config"), "seeds": trial.get("seeds") or [(trial.get("config") or {}).get("seed")],
        "interval": row.get("interval"), "per_seed": row.get("per_seed"),
    }


def select_configuration(trials: list[dict], *, low: float = 0.1, high: float = 0.9,
                         metric: str = "val_acc", mode: str = "max") -> dict:
    """Judge every trial and choose the configuration to evaluate (see the module docstring)."""
    if mode not in ("max", "min"):
        raise SelectionError(f"select.mode: {mode!r}; expected 'max' or 'min'")
    if not isinstance(trials, list) or not trials:
        raise SelectionError("trials: expected a non-empty list of trial dicts (search/trials.json)")
    ok = [t for t in trials if t.get("status") == "ok"]
    if ok and all(metric not in t for t in ok):
        keys = sorted({k for t in ok for k, v in t.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        raise SelectionError(f"select.metric: {metric!r} is in no successful trial; numeric keys: {', '.join(keys)}")
    rows = [judge_trial(t, low=low, high=high, metric=metric) for t in trials]
    by_name = {t["name"]: t for t in trials}
    kept_rows = [r for r in rows if r["decision"] == "kept"]
    kept = _best(kept_rows, mode)
    if kept is not None:
        selected = _choice(kept, by_name[kept["name"]], fallback=False,
                           reason=_reason(f"best kept PreRNN configuration by {metric} ({mode})", kept_rows, kept))
    else:
        rev = _best((r for r in rows if r["decision"] == "reverted"), mode)
        selected = None if rev is None else _choice(
            rev, by_name[rev["name"]], fallback=True,
            reason=(f"no configuration had all its converted layers saturated; fallback: the best reverted "
                    f"configuration by {metric} ({mode}), with its unsaturated layers "
                    f"({', '.join(rev['reverted_layers'])}) in feedforward form"))
    base_rows = [r for r in rows if r["decision"] == "baseline"]
    base = _best(base_rows, mode)
    baseline = None if base is None else _choice(
        base, by_name[base["name"]], fallback=False,
        reason=_reason(f"best traditional RNN by {metric} ({mode})", base_rows, base))
    if selected is not None:
        for r in rows:
            if r["name"] == selected["name"]:
                r["selected"] = True
    return {"metric": metric, "mode": mode, "low": low, "high": high, "rule": RULE, "tie_break": TIE_BREAK,
            "selected": selected, "baseline": baseline,
            "counts": {d: sum(r["decision"] == d for r in rows) for d in ("kept", "reverted", "baseline", "failed")},
            "trials": rows}

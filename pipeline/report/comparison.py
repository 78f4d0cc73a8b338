"""The evaluate stage's answer: the selected configuration against the best traditional RNN on the test split,
over the same seeds, per stream and fused.

In: `pipeline.report.evaluation.run_evaluation`'s result (every role trained once per seed: `result["seeds"][role]`
= [{"seed", "streams": {modality: last-epoch test outputs}, "fused": last-epoch fused outputs}]; `result["targets"]`
the test labels or landmarks) and a task's score functions (`Task.metric_fn`). Out: `compare(...)` -> {view: {metric: {"selected", "baseline" (mean and
95% t-interval over seeds), "difference" (selected - baseline: mean over seeds, paired bootstrap 95% interval
over test clips), "excludes_zero"}}} for view in "fused" and every modality; `comparison_lines(metrics)` the
same as text, one line per view and metric (the evaluate stage prints them).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from pipeline.report.seeds import Interval, mean_interval, paired_bootstrap

# metric name -> (outputs (N, ...), labels (N, ...)) -> value
Scores = dict[str, Callable[[object, object], float]]


def _views(result: dict, modalities: list[str]) -> dict[str, Callable[[dict], object]]:
    views = {"fused": lambda run: run["fused"]}
    views.update({m: (lambda run, m=m: run["streams"][m]) for m in modalities})
    return views


def compare(result: dict, modalities: list[str], scores: Scores, *, resamples: int = 2000) -> dict:
    """See the module docstring; without a baseline only the selected configuration's intervals."""
    labels = result["targets"]
    runs = result["seeds"]
    out = {}
    for view, outputs_of in _views(result, modalities).items():
        out[view] = {}
        for metric, score in scores.items():
            per_role = {role: [score(outputs_of(run), labels) for run in runs[role]] for role in runs}
            entry = {role: {**mean_interval(values).as_dict(), "per_seed": values} for role, values in per_role.items()}
            if "baseline" in runs:
                sel = [outputs_of(run) for run in runs["selected"]]
                base = [outputs_of(run) for run in runs["baseline"]]

                def difference(idx, sel=sel, base=base, score=score):
                    y = labels[idx]
                    return float(np.mean([score(s[idx], y) for s in sel]) - np.mean([score(b[idx], y) for b in base]))

                diff = paired_bootstrap(len(labels), difference, resamples=resamples)
                entry["difference"] = diff.as_dict()
                entry["excludes_zero"] = bool(diff.low > 0 or diff.high < 0)
            out[view][metric] = entry
    return out


def _interval_text(d: dict) -> str:
    return Interval(d["mean"], d["ci_low"], d["ci_high"], d["n"]).text()


def comparison_lines(metrics: dict) -> list[str]:
    """One line per view and metric of metrics.json: selected and baseline (mean [95% interval] over seeds) and
    their difference (paired bootstrap over test clips); then the CNN alone per frame, per modality."""
    lines = []
    for view, per in metrics.get("comparison", {}).items():
        for metric, e in per.items():
            line = f"{view} {metric} over seeds {metrics.get('seeds')}: selected {_interval_text(e['selected'])}"
            if "difference" in e:
                line += (f", baseline {_interval_text(e['baseline'])}, difference {_interval_text(e['difference'])} "
                         f"({'excludes' if e['excludes_zero'] else 'includes'} 0)")
            lines.append(line)
    for m, ref in metrics.get("frame_reference", {}).items():
        lines.append(f"{m} CNN alone (per frame): " + ", ".join(f"{k} {v:.3f}" for k, v in ref.items()))
    return lines

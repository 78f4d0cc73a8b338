"""The evaluate stage's summary for task: regression (the landmark counterpart of `evaluation.summary`).

In: `pipeline.report.evaluation.run_evaluation`'s result on regression clips (per-epoch predicted landmarks
(N, T, K, 2) per stream and fused: the mean of the streams' coordinates; `labels` the true landmarks),
the choices and the `regression` params. Out: (metrics.json, evaluation.json, history.csv rows, ced.csv rows):
- metrics: test_auc / test_nme / test_failure_rate of the selected configuration (fused), the baseline's,
  the AUC gain, per stream, plus n_test clips, n_frames, threshold and normalisation.
- history: per epoch test_auc, test_nme (fused) and per-stream columns, for selected and baseline.
- ced: the cumulative error distribution (error, fraction) of the last epoch per role (pipeline.training.metrics).
"""
from __future__ import annotations

from pipeline.report.evaluation import history_rows, report_parts
from pipeline.training.metrics import ced_curve, nme, regression_metrics, spec_of

FUSION = "mean of the streams' predicted landmark coordinates"


def summary(result: dict, choices: dict, modalities: list[str], spec: dict | None = None):
    s = spec_of(spec)
    y = result["labels"]  # (N, T, K, 2)
    roles = list(result["fused"])
    final = {r: regression_metrics(result["fused"][r][-1], y, s) for r in roles}
    streams = {m: {r: regression_metrics(result["streams"][m][r]["probs"][-1], y, s) for r in roles}
               for m in modalities}
    sel, base = final["selected"], final.get("baseline")
    metrics = {"task": "regression", "test_auc": sel["auc"], "test_nme": sel["nme"],
               "test_failure_rate": sel["failure_rate"],
               "baseline_test_auc": base["auc"] if base else None, "baseline_test_nme": base["nme"] if base else None,
               "baseline_test_failure_rate": base["failure_rate"] if base else None,
               "gain": sel["auc"] - base["auc"] if base else None,
               "n_test": int(y.shape[0]), "n_frames": int(y.shape[0] * y.shape[1]), "points": int(y.shape[2]),
               "threshold": s["threshold"], "normalize": s["normalize"],
               "streams": {m: {"test_auc": st["selected"]["auc"], "test_nme": st["selected"]["nme"],
                               "baseline_test_auc": st["baseline"]["auc"] if "baseline" in st else None}
                           for m, st in streams.items()},
               "selected": choices["selected"]["name"], "baseline": (choices.get("baseline") or {}).get("name")}
    from pipeline.report.comparison import compare

    metrics["comparison"] = compare(result, modalities, {
        "test_auc": lambda pred, gt: regression_metrics(pred, gt, s)["auc"],
        "test_nme": lambda pred, gt: regression_metrics(pred, gt, s)["nme"]}, resamples=1000)
    metrics["seeds"] = [run["seed"] for run in result["seeds"]["selected"]]
    metrics["frame_reference"] = {m: {"test_auc": result["frames"][m]["auc"], "test_nme": result["frames"][m]["nme"]}
                                  for m in modalities}
    parts = report_parts(result, choices, modalities)
    report = {"task": "regression", "fusion": FUSION if len(modalities) > 1 else None, "modalities": modalities,
              "regression": s, "choices": parts["choices"], "fused": final, "streams": streams,
              "train_config": parts["train_config"]}

    def fused_columns(out):
        fm = regression_metrics(out, y, s)
        return {"test_auc": fm["auc"], "test_nme": fm["nme"]}

    history = history_rows(result, modalities, fused_columns, ("test_auc", "train_loss", "train_nme"))
    ced = []
    for r in roles:
        errors = nme(result["fused"][r][-1], y, s["normalize"], s["eyes"])
        ced += [{"role": r, **pt} for pt in ced_curve(errors, s["threshold"])]
    return metrics, report, history, ced

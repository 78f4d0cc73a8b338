"""DVC stage `evaluate`: the selected configuration against the best traditional RNN, on the test split.

In: `reports/selection.json` (select stage), `models/pretrained/<modality>.pt`, the clips, `search/search.json`
(MLflow parent run), params sections `evaluate` (+ `search` for training defaults).
Out (atomic): `models/final.pt` (one stream: {"config", "state_dict", "meta"}; several: {"streams": {modality:
{"config", "state_dict"}}, "meta"}; meta = class_names, normalization, extract, modalities, fusion, selected),
`metrics.json` (fused and per-stream test accuracy, baseline, gain, per-class accuracy), `reports/history.csv`
(per epoch: fused test_acc, baseline_test_acc, per-stream columns), `reports/curves.csv` (the same test scores in
long form: epoch, series, test_acc), `reports/evaluation.json` (confusion matrices, train configs) and the task's
plot in a folder named by the task: `reports/classification/confusion.csv` (actual,predicted per test clip, fused
selected model). Task regression: metrics.json holds test_auc / test_nme / test_failure_rate, history.csv and
curves.csv test_auc (+ test_nme) per epoch, and `reports/regression/ced.csv` (role,error,fraction) the cumulative
error distribution of the selected model and the baseline (last epoch); the task (pipeline.training.tasks) says
which (`pipeline.report.evaluation.summary`). dvc.yaml declares `reports/${task}` (DVC interpolates params.yaml's
`task`), so each task has exactly the plots that apply to it.
MLflow: a child run "evaluate" of the search's parent run with the model registered as `evaluate.register_name`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.core.atomic import atomic_path, write_json, write_text
from pipeline.core.csv_text import csv_text
from pipeline.checks import load_stage_params


def _read_json(path: Path, what: str, required: bool = True) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        if required:
            sys.exit(f"evaluate: {path} is missing; {what}")
        return {}
    except json.JSONDecodeError as err:
        sys.exit(f"evaluate: {path} is not valid JSON: {err}")


def comparison_lines(metrics: dict) -> list[str]:
    """One line per view and metric: selected and baseline (mean [95% interval] over seeds) and their difference
    (paired bootstrap over test clips)."""
    from pipeline.report.seeds import Interval

    def text(d):
        return Interval(d["mean"], d["ci_low"], d["ci_high"], d["n"]).text()

    lines = []
    for view, per in metrics.get("comparison", {}).items():
        for metric, e in per.items():
            line = f"{view} {metric} over seeds {metrics.get('seeds')}: selected {text(e['selected'])}"
            if "difference" in e:
                line += (f", baseline {text(e['baseline'])}, difference {text(e['difference'])} "
                         f"({'excludes' if e['excludes_zero'] else 'includes'} 0)")
            lines.append(line)
    for m, ref in metrics.get("frame_reference", {}).items():
        lines.append(f"{m} CNN alone (per frame): " + ", ".join(f"{k} {v:.3f}" for k, v in ref.items()))
    return lines


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--clips", default="data/clips")
    ap.add_argument("--pretrained", default="models/pretrained")
    ap.add_argument("--selection", default="reports/selection.json")
    ap.add_argument("--search", default="search", help="the search stage's folder (search.json: MLflow parent run)")
    ap.add_argument("--out", default="models/final.pt")
    ap.add_argument("--metrics", default="metrics.json")
    ap.add_argument("--plots", default="reports", help="folder for confusion.csv, history.csv, evaluation.json")
    args = ap.parse_args(argv)

    # deferred past argparse (`--help`, a bad argument answer at once): torch, Ray, MLflow take seconds to import
    import torch

    from pipeline.data.clipstore import ClipFileError
    from pipeline.report.evaluation import FusedModel, curve_rows, final_checkpoint, run_evaluation, summary
    from pipeline.training.tasks import task_from_params
    from pipeline.training.trainer import pick_device

    params = load_stage_params(args.params, "evaluate")
    p = params.evaluate
    task = task_from_params(params)
    selection = _read_json(Path(args.selection), "run the select stage first (dvc repro select)")
    if not selection.get("selected"):
        why = selection.get("no_selection") or "no PreRNN trial succeeded"
        sys.exit(f"evaluate: {args.selection}: no configuration was selected ({why}); see its trials' reasons")
    choices = {"selected": selection["selected"], "baseline": selection.get("baseline")}
    try:
        result = run_evaluation(args.clips, args.pretrained, choices, modalities=list(p.modalities), epochs=p.epochs,
                                search_params=params.search, task=task, device=pick_device(True),
                                cache_trunk=params.search.cache_trunk)
    except ClipFileError as err:  # a clip file cut short or overwritten: one line naming it, before training
        print(f"evaluate: {err}", file=sys.stderr)
        sys.exit(2)
    except (FileNotFoundError, ValueError) as err:  # a missing / refused pretrained file, clips that do not fit
        sys.exit(f"evaluate: {err}")
    metrics, report, history, plot_rows = summary(result, choices, list(p.modalities), task)

    clip_meta = result["meta"]
    meta = {"class_names": result["class_names"],
            "normalization": {m: clip_meta["prernn.normalization"][m] for m in p.modalities},
            "extract": clip_meta.get("prernn.extract"), "modalities": list(p.modalities),
            "fusion": task.fusion if len(p.modalities) > 1 else None, "selected": choices["selected"]["name"],
            "layers": choices["selected"]["layers"], "reverted_layers": choices["selected"].get("reverted_layers", []),
            **task.entries()}  # the task, restored by prernn predict and the pyfunc predictor
    models = {m: result["streams"][m]["selected"]["model"] for m in p.modalities}
    with atomic_path(args.out) as tmp:
        torch.save(final_checkpoint(models, meta), tmp)
    plots = Path(args.plots)
    score = f"test_{task.score_metric}"
    write_text(plots / "history.csv", csv_text(history))
    write_text(plots / "curves.csv", csv_text(curve_rows(history, score)))
    # the task's own plot, in a folder named by the task (dvc.yaml: `reports/${task}`): DVC draws only what exists
    task_plot = plots / task.name / task.plot_file
    with atomic_path(task_plot.parent) as tmp:
        tmp.mkdir()
        (tmp / task_plot.name).write_text(csv_text(plot_rows))

    search_meta = _read_json(Path(args.search) / "search.json", "", required=False)
    mlflow_info = None
    if search_meta.get("parent_run_id"):
        from pipeline.serve.mlflow_model import log_final_model, log_reports

        channels = {m: int(models[m].config["backbone"].get("in_channels", 3)) for m in p.modalities}
        fused = FusedModel(models, channels, task)
        example = torch.cat([result["examples"][m] for m in p.modalities], dim=2)  # (2, T, sum C, H, W)
        flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None}
        flat.update({f"{view}_{metric}_{part}": e["difference"][key]
                     for view, per in metrics["comparison"].items() for metric, e in per.items() if "difference" in e
                     for part, key in (("difference", "mean"), ("difference_ci_low", "ci_low"),
                                       ("difference_ci_high", "ci_high"))})
        flat.update({f"{m}_{k}": v for m, s in metrics["streams"].items() for k, v in s.items() if v is not None})
        mlflow_info = log_final_model(
            search_meta, fused, register_name=p.register_name, model_meta=meta, example=example, metrics=flat,
            params={"evaluate": p.model_dump(), "selected": choices["selected"]["name"]},
            files=[task_plot, plots / "history.csv"], final_path=args.out, history=history,
            version_tags={"selected": choices["selected"]["name"], "metric": selection.get("metric"),
                          "table1_score": choices["selected"].get("score"), "test_score": metrics[score],
                          "baseline": metrics["baseline"], "task": task.name})
        log_reports(search_meta, [task_plot, plots / "history.csv"], artifact_path="evaluate",
                    tags={f"final_{k}": v for k, v in flat.items()})
    report["mlflow"] = mlflow_info
    write_json(plots / "evaluation.json", report)
    write_json(args.metrics, metrics)
    base = f", baseline {metrics['baseline']} {metrics['baseline_' + score]:.3f}" if metrics["baseline"] else ""
    others = {k: metrics[f"test_{k}"] for k in task.metric_keys if k != task.score_metric}  # regression: nme, ...
    extra = " (" + ", ".join(f"{k} {v:.4f}" for k, v in others.items()) + ")" if others else ""
    print(f"evaluate: {metrics['selected']} {score} {metrics[score]:.3f}{extra}{base} (first seed)")
    for line in comparison_lines(metrics):
        print(f"evaluate: {line}")


if __name__ == "__main__":
    main()

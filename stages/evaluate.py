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
`task`), so each task has exactly the plots that apply to it. The work: `pipeline.report.final_evaluation`.
MLflow: a child run "evaluate" of the search's parent run with the model registered as `evaluate.register_name`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.core.atomic import write_json
from pipeline.checks import load_stage_params
from pipeline.data.clipstore import ClipFileError
from pipeline.report.comparison import comparison_lines
from pipeline.report.final_evaluation import (FinalEvaluation, evaluate_choices, fused_model, mlflow_metrics,
                                              summary_line, version_tags, write_final)
from pipeline.report.inputs import ReportInputError, read_choices, read_json
from pipeline.serve.mlflow_model import log_final_model, log_reports
from pipeline.training.tasks import task_from_params


def log_to_mlflow(search_meta: dict, ev: FinalEvaluation, p, selection: dict, final_path: str,
                  files: list[Path]) -> dict | None:
    """The final model and its files in a child run of the search's parent run; its info, None if MLflow failed."""
    fused, example = fused_model(ev)
    flat = mlflow_metrics(ev.metrics)
    run_params = {"evaluate": p.model_dump(), "selected": ev.choices["selected"]["name"]}
    info = log_final_model(search_meta, fused, register_name=p.register_name, model_meta=ev.meta, example=example,
                           metrics=flat, params=run_params, files=files, final_path=final_path, history=ev.history,
                           version_tags=version_tags(ev, selection))
    log_reports(search_meta, files, artifact_path="evaluate", tags={f"final_{k}": v for k, v in flat.items()})
    return info


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
    params = load_stage_params(args.params, "evaluate")
    task = task_from_params(params)
    try:
        selection, choices = read_choices(args.selection)
        ev = evaluate_choices(args.clips, args.pretrained, choices, params, task)
    except ClipFileError as err:  # a clip file cut short or overwritten: one line naming it, before training
        print(f"evaluate: {err}", file=sys.stderr)
        sys.exit(2)
    except (FileNotFoundError, ValueError) as err:  # a missing / refused pretrained file, clips that do not fit
        sys.exit(f"evaluate: {err}")
    files = write_final(ev, args.out, Path(args.plots))
    try:
        search_meta = read_json(Path(args.search) / "search.json", "", required=False)
    except ReportInputError as err:
        sys.exit(f"evaluate: {err}")
    mlflow_info = None
    if search_meta.get("parent_run_id"):
        mlflow_info = log_to_mlflow(search_meta, ev, params.evaluate, selection, args.out, files)
    write_json(Path(args.plots) / "evaluation.json", {**ev.report, "mlflow": mlflow_info})
    write_json(args.metrics, ev.metrics)
    print(summary_line(ev.metrics, task))
    for line in comparison_lines(ev.metrics):
        print(f"evaluate: {line}")


if __name__ == "__main__":
    main()

"""The evaluate stage's work end to end: the selected configuration against the best traditional RNN on the test
split, the final model and its files.

In: the select stage's choices (`pipeline.report.inputs.read_choices`), the clips, the pretrained streams, the
validated params (`evaluate`, `search` for training defaults) and the task (pipeline.training.tasks).
Out: `evaluate_choices(...) -> FinalEvaluation` (`pipeline.report.evaluation.run_evaluation` + `summary`: metrics.json,
evaluation.json, history.csv rows, the task's plot rows, the trained streams and the final model's meta);
`write_final(...)` writes `final.pt` (`evaluation.final_checkpoint`), `history.csv`, `curves.csv` and the task's
plot in a folder named by the task (`reports/<task>/<plot_file>`, dvc.yaml: `reports/${task}`);
`mlflow_metrics`, `version_tags` and `fused_model` are what MLflow's child run "evaluate" logs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pipeline.core.atomic import atomic_path, write_text
from pipeline.core.csv_text import csv_text
from pipeline.report.evaluation import FusedModel, curve_rows, final_checkpoint, run_evaluation, summary
from pipeline.training.tasks import Task
from pipeline.training.trainer import pick_device


@dataclass
class FinalEvaluation:
    """`evaluate_choices`' answer: run_evaluation's `result`, the `choices` trained, the evaluated `modalities`,
    summary's `metrics` / `report` / `history` / `plot_rows`, the final model's `meta` and `models` (modality ->
    the selected configuration's first-seed model)."""

    result: dict
    choices: dict
    modalities: list[str]
    task: Task
    metrics: dict
    report: dict
    history: list[dict]
    plot_rows: list[dict]
    meta: dict
    models: dict[str, nn.Module]


def final_meta(result: dict, choices: dict, modalities: list[str], task: Task) -> dict:
    """models/final.pt's meta: class_names, normalization, extract, modalities, fusion, the selected configuration
    and the task's entries (restored by prernn predict and the pyfunc predictor)."""
    clip_meta = result["meta"]
    selected = choices["selected"]
    return {"class_names": result["class_names"],
            "normalization": {m: clip_meta["prernn.normalization"][m] for m in modalities},
            "extract": clip_meta.get("prernn.extract"), "modalities": list(modalities),
            "fusion": task.fusion if len(modalities) > 1 else None, "selected": selected["name"],
            "layers": selected["layers"], "reverted_layers": selected.get("reverted_layers", []),
            **task.entries()}


def evaluate_choices(clips_dir, pretrained_dir, choices: dict, params, task: Task) -> FinalEvaluation:
    """Train and test `choices` ({"selected", "baseline"}) per stream of `params.evaluate.modalities`, fused."""
    modalities = list(params.evaluate.modalities)
    result = run_evaluation(clips_dir, pretrained_dir, choices, modalities=modalities, epochs=params.evaluate.epochs,
                            search_params=params.search, task=task, device=pick_device(True),
                            cache_trunk=params.search.cache_trunk)
    metrics, report, history, plot_rows = summary(result, choices, modalities, task)
    models = {m: result["streams"][m]["selected"]["model"] for m in modalities}
    return FinalEvaluation(result, choices, modalities, task, metrics, report, history, plot_rows,
                           final_meta(result, choices, modalities, task), models)


def write_final(ev: FinalEvaluation, final_path, plots: Path) -> list[Path]:
    """Write final.pt, `plots`/history.csv, curves.csv and the task's plot; returns [task plot, history.csv]."""
    with atomic_path(final_path) as tmp:
        torch.save(final_checkpoint(ev.models, ev.meta), tmp)
    score = f"test_{ev.task.score_metric}"
    write_text(plots / "history.csv", csv_text(ev.history))
    write_text(plots / "curves.csv", csv_text(curve_rows(ev.history, score)))
    # the task's own plot, in a folder named by the task (dvc.yaml: `reports/${task}`): DVC draws only what exists
    task_plot = plots / ev.task.name / ev.task.plot_file
    with atomic_path(task_plot.parent) as tmp:
        tmp.mkdir()
        (tmp / task_plot.name).write_text(csv_text(ev.plot_rows))
    return [task_plot, plots / "history.csv"]


def fused_model(ev: FinalEvaluation) -> tuple[FusedModel, torch.Tensor]:
    """Every stream in one module (MLflow's PyTorch flavour) and an input example (2, T, sum C, H, W)."""
    channels = {m: int(ev.models[m].config["backbone"].get("in_channels", 3)) for m in ev.modalities}
    example = torch.cat([ev.result["examples"][m] for m in ev.modalities], dim=2)  # (2, T, sum C, H, W)
    return FusedModel(ev.models, channels, ev.task), example


def mlflow_metrics(metrics: dict) -> dict:
    """metrics.json flattened for MLflow: its numbers, each comparison's difference with its interval
    (`<view>_<metric>_difference[_ci_low|_ci_high]`) and every stream's (`<modality>_<key>`)."""
    flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None}
    flat.update({f"{view}_{metric}_{part}": e["difference"][key]
                 for view, per in metrics["comparison"].items() for metric, e in per.items() if "difference" in e
                 for part, key in (("difference", "mean"), ("difference_ci_low", "ci_low"),
                                   ("difference_ci_high", "ci_high"))})
    flat.update({f"{m}_{k}": v for m, s in metrics["streams"].items() for k, v in s.items() if v is not None})
    return flat


def version_tags(ev: FinalEvaluation, selection: dict) -> dict:
    """The registered model version's tags: the selected configuration, its Table 1 and test scores."""
    selected = ev.choices["selected"]
    return {"selected": selected["name"], "metric": selection.get("metric"), "table1_score": selected.get("score"),
            "test_score": ev.metrics[f"test_{ev.task.score_metric}"], "baseline": ev.metrics["baseline"],
            "task": ev.task.name}


def summary_line(metrics: dict, task: Task) -> str:
    """The evaluate stage's one line: the selected configuration's test score (+ the task's other metrics) and the
    baseline's, on the first seed."""
    score = f"test_{task.score_metric}"
    base = f", baseline {metrics['baseline']} {metrics['baseline_' + score]:.3f}" if metrics["baseline"] else ""
    others = {k: metrics[f"test_{k}"] for k in task.metric_keys if k != task.score_metric}  # regression: nme, ...
    extra = " (" + ", ".join(f"{k} {v:.4f}" for k, v in others.items()) + ")" if others else ""
    return f"evaluate: {metrics['selected']} {score} {metrics[score]:.3f}{extra}{base} (first seed)"

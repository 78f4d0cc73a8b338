"""The search's results: one `TrialRow` per trial from its last Ray result, and the files of the search stage.

`trial_row(result, archs, settings, run_ids, task)`: the row (pipeline.search.trial_config.TrialRow) of a Ray
`Result`, its metrics at the best epoch by the task's score (`summarize`). `write_outputs(out, rows, info)`:
search/trials.json, trials.csv (`ROW_KEYS` and the task's other val keys) and search.json, in one atomic folder.
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from pipeline.core.atomic import atomic_path
from pipeline.search.trial_config import ROW_KEYS, ROW_VAL_KEYS, TRACKING_KEYS, Arch, TrialRow, TrialSettings, flat_config
from pipeline.training.tasks import Task
from pipeline.training.trainer import summarize, summary_keys


def short_error(error) -> str:
    """The root cause of a Ray trial error as one line `Type: message`."""
    cause = error
    for _ in range(5):
        inner = getattr(cause, "cause", None) or getattr(cause, "__cause__", None)
        if inner is None or inner is cause:
            break
        cause = inner
    text = f"{type(cause).__name__}: {cause}"
    lines = [ln.strip() for ln in str(cause).splitlines() if ln.strip()]
    if len(lines) > 1:  # a traceback: keep its last line (the exception)
        text = lines[-1]
    return text[:1000]


def trial_row(result, archs: dict[str, Arch], settings: TrialSettings, run_ids: dict, task: Task) -> TrialRow:
    """One trials.json row from a Ray Result. `archs`: {trial name: Arch} and `settings`: the trial config of a
    restored trial that failed before its first report (Ray keeps none for it); `run_ids`: {trial name: MLflow
    child run id}, where its last result names none."""
    config = result.config
    if config is None:
        name = Path(result.path).name.rsplit("_", 2)[0]  # tuner.trial_dirname: <name>_<trial_id (xxxxx_NNNNN)>
        config = {**settings, "arch": archs[name]}
    cfg = flat_config(config)
    metrics = result.metrics or {}
    history = json.loads(metrics.get("history_json", "[]"))
    summary = summarize(history, task)
    failed = result.error is not None
    return {
        "name": cfg["name"], "configuration": cfg.get("configuration", cfg["name"]), "seed": cfg.get("seed"),
        "kind": cfg["kind"], "cell": cfg["cell"], "sih": bool(cfg["sih"]),
        "layers": list(cfg["layers"]), "num_layers": int(cfg["num_layers"]),
        "status": "failed" if failed else "ok", "error": short_error(result.error) if failed else None,
        **{k: summary.at_best(k) for k in ROW_VAL_KEYS},
        "epochs_to_95": summary.epochs_to_95, **{k: summary.at_best(k) for k in summary_keys(task)},
        "clips_per_sec": summary.clips_per_sec, "recurrent_params": metrics.get("recurrent_params"),
        "mlflow_run_id": metrics.get("mlflow_run_id") or run_ids.get(cfg["name"]),
        "gate_stats": json.loads(metrics["gate_stats_json"]) if metrics.get("gate_stats_json") else None,
        "node_id": metrics.get("node_id"), "node_ip": metrics.get("node_ip"),
        "history": history, "epochs_run": len(history), "best_epoch": summary.best_epoch,
        "stopped_early": not failed and len(history) < int(cfg["epochs"]),
        "config": {k: v for k, v in cfg.items() if k not in TRACKING_KEYS},
    }


def trials_csv(rows: list[TrialRow]) -> str:
    """The trial table as CSV (one line per trial, the scalar keys of trials.json)."""
    buf = io.StringIO()
    extra = [k for k in (rows[0] if rows else {}) if k.startswith("val_") and k not in ROW_KEYS]  # the task's
    writer = csv.DictWriter(buf, fieldnames=list(ROW_KEYS) + extra + ["epochs_run"], extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "layers": "+".join(row["layers"])})
    return buf.getvalue()


def write_outputs(out_dir: str | os.PathLike, rows: list[TrialRow], info: dict) -> None:
    """search/trials.json, trials.csv, search.json, written together atomically (one folder rename)."""
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        (tmp / "trials.json").write_text(json.dumps(rows, indent=1, default=str) + "\n")
        (tmp / "trials.csv").write_text(trials_csv(rows))
        (tmp / "search.json").write_text(json.dumps(info, indent=2, default=str) + "\n")

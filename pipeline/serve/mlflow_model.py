"""MLflow for the select and evaluate stages: reports to the search's parent run, the final model to the registry.

`log_reports(search_meta, paths, artifact_path, ...)`: files / folders (Table 1, selection.json, plots, metrics)
become artifacts of the search's parent run (`search/search.json`: parent_run_id, tracking_uri;
MLFLOW_TRACKING_URI in the environment wins), with optional summary tags.
`log_final_model(...)`: a child run "evaluate" of the parent run holding the test metrics and the final model in
MLflow's PyTorch flavour (`mlflow.pytorch.log_model(model, name="model", registered_model_name=...)`,
MLflow 3 signature: `name` replaces the deprecated `artifact_path`), registered under `evaluate.register_name`.
The logged module is `pipeline.report.evaluation.FusedModel` (input: the streams' normalised clips concatenated on the
channel axis, output: fused class probabilities); its MLflow `metadata` holds the class names, the
normalisation, the extract params, the modalities and the fusion rule, and `models/final.pt` is logged beside it.
Both registered models (`<name>`, `<name>-predictor`) get a description and tags, their new version the selected
configuration, its Table 1 score, the test score and the commit, and the alias `@champion`
(`models:/<name>-predictor@champion` is what to serve).

MLflow problems never lose the stage's files: they are reported on stderr as a warning naming the URI and run.
"""
from __future__ import annotations

import sys
from pathlib import Path

from pipeline.core.tracking import COMMIT_TAG, Tracker, check_reachable, resolve_tracking_uri, summary_text

MODEL_NAME = "model"


def _tracker(meta: dict) -> Tracker:
    """The store of the search (`meta`: search.json; MLFLOW_TRACKING_URI wins), its server checked."""
    tracker = Tracker(resolve_tracking_uri(meta.get("tracking_uri"))[0])
    check_reachable(tracker.uri)
    return tracker


def _warn(what: str, meta: dict, err: Exception) -> None:
    print(f"warning: MLflow: could not {what} (tracking URI {meta.get('tracking_uri')}, parent run "
          f"{meta.get('parent_run_id')}): {type(err).__name__}: {err}", file=sys.stderr)


def log_reports(meta: dict, paths: list, *, artifact_path: str, tags: dict | None = None) -> bool:
    """Log each existing file / folder of `paths` under `artifact_path` of the parent run, and `tags` (summary
    values, rounded: `Tracker.log_summary`); True on success."""
    try:
        tracker, run_id = _tracker(meta), meta["parent_run_id"]
        c = tracker.client
        for p in map(Path, paths):
            if p.is_dir():
                c.log_artifacts(run_id, str(p), f"{artifact_path}/{p.name}")
            elif p.exists():
                c.log_artifact(run_id, str(p), artifact_path)
        tracker.log_summary(run_id, tags or {})
        return True
    except Exception as err:  # noqa: BLE001 - see the module docstring
        _warn(f"log {artifact_path} reports", meta, err)
        return False


ALIAS = "champion"
DESCRIPTIONS = {
    "": "The PreRNN model chosen by the search (claim 12 + validation score), retrained on train+val, in MLflow's "
        "PyTorch flavour: input the streams' normalised clips concatenated on the channel axis (B, T, C, H, W), "
        "output fused class probabilities (B, T, K), or landmarks for task regression. For Python callers that "
        "preprocess themselves.",
    "-predictor": "The same model as a pyfunc predictor that decodes videos itself: a DataFrame with a `path` column "
                  "of video files in, one prediction per video out. Serve this one "
                  "(`mlflow models serve -m models:/{name}@champion`).",
}


def describe_registry(tracker: Tracker, register_name: str, versions: dict, tags: dict) -> None:
    """Descriptions and tags on both registered models (`register_name`, `<register_name>-predictor`) and on the
    new versions (`versions`: {name: version}), and alias @champion on each new version."""
    c = tracker.client
    text = {k: summary_text(v) for k, v in tags.items() if v is not None}
    for suffix, description in DESCRIPTIONS.items():
        name, version = register_name + suffix, versions.get(register_name + suffix)
        if version is None:
            continue
        c.update_registered_model(name, description=description.format(name=name))
        c.set_registered_model_tag(name, "serve", f"models:/{register_name}-predictor@{ALIAS}")
        c.update_model_version(name, version, description=(
            f"{text.get('selected', '?')}: Table 1 {text.get('metric', 'score')} {text.get('table1_score', '?')}, "
            f"test {text.get('test_score', '?')} (baseline {text.get('baseline', 'none')}); commit "
            f"{text.get('git_commit', 'unknown')[:12]}"))
        for key, value in text.items():
            c.set_model_version_tag(name, version, key, value)
        c.set_registered_model_alias(name, ALIAS, version)


def log_final_model(meta: dict, model, *, register_name: str, model_meta: dict, example, metrics: dict,
                    params: dict, files: list, final_path: str | Path, history: list | None = None,
                    version_tags: dict | None = None) -> dict | None:
    """Log the final model and the evaluation to a child run of the parent (the test scores per epoch from
    `history`, then the final `metrics`); register it and describe the registry (`describe_registry`, tagged
    with `version_tags` and the commit); return {"run_id", "model_uri", "registered", "version", ...} or None when
    MLflow failed (warned)."""
    try:
        import mlflow
        import mlflow.pytorch
        import torch
        from mlflow.models import infer_signature

        tracker = _tracker(meta)
        uri = tracker.uri
        exp = meta.get("experiment_id") or tracker.ensure_experiment("prernn")
        run_id = tracker.start_run(exp, "evaluate", parent_run_id=meta.get("parent_run_id"), params=params,
                                   stage="evaluate")
        for row in history or []:  # curves, not single points: the test scores per epoch
            tracker.log_batch(run_id, metrics={k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
        last = (history or [{}])[-1]  # the final values of the curves are their last points already
        tracker.log_batch(run_id, metrics={k: v for k, v in metrics.items() if k not in last}, step=len(history or []))
        c = tracker.client
        for p in map(Path, files):
            if p.exists():
                c.log_artifact(run_id, str(p), "evaluate")
        c.log_artifact(run_id, str(final_path), "final")
        model = model.eval()
        with torch.no_grad():
            out = model(example)
        signature = infer_signature(example.numpy(), out.numpy())  # batch axis -1: any batch size
        root = Path(__file__).resolve().parents[2]
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        common = dict(name=MODEL_NAME, registered_model_name=register_name, signature=signature,
                      metadata=model_meta, pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy"])
        with mlflow.start_run(run_id=run_id):
            try:  # the safe default of MLflow 3: a torch.export graph, loadable without this code
                info = mlflow.pytorch.log_model(model, input_example=example.numpy(), serialization_format="pt2",
                                                **common)
                fmt = "pt2"
            except Exception as err:  # noqa: BLE001 - a model torch.export cannot trace: pickle + our code
                print(f"warning: MLflow: torch.export failed ({type(err).__name__}: {str(err)[:200]}); "
                      "logging the model pickled with the prernn and pipeline code", file=sys.stderr)
                info = mlflow.pytorch.log_model(model, serialization_format="pickle",
                                                code_paths=[str(root / "prernn"), str(root / "pipeline")], **common)
                fmt = "pickle"
            try:  # the pyfunc "predictor" (pipeline.serve.pyfunc): a DataFrame of video paths in, classes out
                from pipeline.serve.pyfunc import log_predictor

                predictor = log_predictor(final_path, registered_model_name=f"{register_name}-predictor",
                                          metadata=model_meta)
                predictor_uri = predictor.model_uri
            except Exception as err:  # noqa: BLE001 - the PyTorch model above is still logged
                predictor, predictor_uri = None, None
                _warn("log the pyfunc predictor", meta, err)
        tracker.end_run(run_id, "FINISHED")
        version = getattr(info, "registered_model_version", None)
        versions = {register_name: version,
                    f"{register_name}-predictor": getattr(predictor, "registered_model_version", None)}
        commit = c.get_run(run_id).data.tags.get(COMMIT_TAG, "unknown")
        describe_registry(tracker, register_name, versions, {**(version_tags or {}), "git_commit": commit,
                                                         "run_id": run_id})
        return {"run_id": run_id, "model_uri": info.model_uri, "registered": register_name, "format": fmt,
                "version": None if version is None else str(version), "predictor_uri": predictor_uri,
                "alias_uri": f"models:/{register_name}@{ALIAS}" if version is not None else None}
    except Exception as err:  # noqa: BLE001 - see the module docstring
        _warn("log the final model", meta, err)
        return None

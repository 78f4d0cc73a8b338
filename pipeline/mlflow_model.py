"""MLflow for the select and evaluate stages: reports to the search's parent run, the final model to the registry.

`log_reports(search_meta, paths, artifact_path, ...)`: files / folders (Table 1, selection.json, plots, metrics)
become artifacts of the search's parent run (`search/search.json`: parent_run_id, tracking_uri;
MLFLOW_TRACKING_URI in the environment wins), with optional tags and metrics.
`log_final_model(...)`: a child run "evaluate" of the parent run holding the test metrics and the final model in
MLflow's PyTorch flavour (`mlflow.pytorch.log_model(model, name="model", registered_model_name=...)`,
MLflow 3 signature: `name` replaces the deprecated `artifact_path`), registered under `evaluate.register_name`.
The logged module is `pipeline.evaluation.FusedModel` (input: the streams' normalised clips concatenated on the
channel axis, output: fused class probabilities); its MLflow `metadata` holds the class names, the
normalisation, the extract params, the modalities and the fusion rule, and `models/final.pt` is logged beside it.

MLflow problems never lose the stage's files: they are reported on stderr as a warning naming the URI and run.
"""
from __future__ import annotations

import sys
from pathlib import Path

from pipeline import tracking

MODEL_NAME = "model"


def _uri(meta: dict) -> str:
    return tracking.resolve_tracking_uri(meta.get("tracking_uri"))[0]


def _warn(what: str, meta: dict, err: Exception) -> None:
    print(f"warning: MLflow: could not {what} (tracking URI {meta.get('tracking_uri')}, parent run "
          f"{meta.get('parent_run_id')}): {type(err).__name__}: {err}", file=sys.stderr)


def log_reports(meta: dict, paths: list, *, artifact_path: str, tags: dict | None = None,
                metrics: dict | None = None) -> bool:
    """Log each existing file / folder of `paths` under `artifact_path` of the parent run; True on success."""
    try:
        uri, run_id = _uri(meta), meta["parent_run_id"]
        tracking.check_reachable(uri)
        c = tracking.client(uri)
        for p in map(Path, paths):
            if p.is_dir():
                c.log_artifacts(run_id, str(p), f"{artifact_path}/{p.name}")
            elif p.exists():
                c.log_artifact(run_id, str(p), artifact_path)
        tracking.set_tags(uri, run_id, tags or {})
        tracking.log_metrics(uri, run_id, {k: v for k, v in (metrics or {}).items() if v is not None})
        return True
    except Exception as err:  # noqa: BLE001 - see the module docstring
        _warn(f"log {artifact_path} reports", meta, err)
        return False


def log_final_model(meta: dict, model, *, register_name: str, model_meta: dict, example, metrics: dict,
                    params: dict, files: list, final_path: str | Path) -> dict | None:
    """Log the final model and the evaluation to a child run of the parent; return {"run_id", "model_uri",
    "registered", "version"} or None when MLflow failed (warned)."""
    try:
        import mlflow
        import mlflow.pytorch
        import torch
        from mlflow.models import infer_signature

        uri = _uri(meta)
        tracking.check_reachable(uri)
        exp = meta.get("experiment_id") or tracking.ensure_experiment(uri, "prernn")
        run_id = tracking.start_run(uri, exp, "evaluate", parent_run_id=meta.get("parent_run_id"), params=params,
                                    stage="evaluate")
        tracking.log_metrics(uri, run_id, metrics)
        c = tracking.client(uri)
        for p in map(Path, files):
            if p.exists():
                c.log_artifact(run_id, str(p), "evaluate")
        c.log_artifact(run_id, str(final_path), "final")
        model = model.eval()
        with torch.no_grad():
            out = model(example)
        signature = infer_signature(example.numpy(), out.numpy())  # batch axis -1: any batch size
        root = Path(__file__).resolve().parents[1]
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
            try:  # the pyfunc "predictor" (pipeline.pyfunc): a DataFrame of video paths in, classes out
                from pipeline.pyfunc import log_predictor

                predictor_uri = log_predictor(final_path, registered_model_name=f"{register_name}-predictor",
                                              metadata=model_meta).model_uri
            except Exception as err:  # noqa: BLE001 - the PyTorch model above is still logged
                predictor_uri = None
                _warn("log the pyfunc predictor", meta, err)
        tracking.end_run(uri, run_id, "FINISHED")
        version = getattr(info, "registered_model_version", None)
        return {"run_id": run_id, "model_uri": info.model_uri, "registered": register_name, "format": fmt,
                "version": None if version is None else str(version), "predictor_uri": predictor_uri}
    except Exception as err:  # noqa: BLE001 - see the module docstring
        _warn("log the final model", meta, err)
        return None

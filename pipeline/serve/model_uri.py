"""`prernn predict`'s MODEL argument -> a local final.pt: a file, a folder holding one, or an MLflow URI.

`resolve_model(spec, tracking_uri, workdir)`: `models/final.pt`; a folder (`models/`, a downloaded MLflow model)
-> its shallowest final.pt; `runs:/<run>/<path>`, `models:/<name>/<version>`, `models:/<name>@<alias>` ->
downloaded into `workdir`: the final.pt among the model's artifacts (the pyfunc "predictor" of
pipeline.serve.pyfunc), else its run's `final/final.pt` (a PyTorch-flavour model). PredictError naming the
argument otherwise.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from pipeline.core.tracking import resolve_tracking_uri
from pipeline.serve.errors import PredictError


def resolve_model(spec: str, tracking_uri: str | None = None, workdir: str | Path | None = None) -> Path:
    """MODEL argument -> a local final.pt path (MLflow URIs are downloaded into `workdir`)."""
    if spec.startswith(("runs:/", "models:/")):
        return mlflow_final(spec, tracking_uri, workdir)
    path = Path(spec)
    if path.is_dir():
        found = sorted(path.rglob("final.pt"), key=lambda p: (len(p.parts), str(p)))
        if not found:
            raise PredictError(f"{path}: folder holds no final.pt (expected the evaluate stage's models/ folder "
                               "or a downloaded MLflow model)")
        return found[0]
    if not path.exists():
        raise PredictError(f"{path}: no such model file, folder or MLflow URI (runs:/..., models:/...)")
    return path


def mlflow_final(uri: str, tracking_uri: str | None, workdir) -> Path:
    """The final.pt of MLflow model `uri`, downloaded into `workdir` (a new temporary folder when None)."""
    import mlflow  # deferred: a local final.pt needs no MLflow (about 1 s to import)

    resolved = resolve_tracking_uri(tracking_uri)[0]
    mlflow.set_tracking_uri(resolved)
    mlflow.set_registry_uri(resolved)
    dst = Path(workdir or tempfile.mkdtemp(prefix="prernn-predict-"))
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst / "model")))
        found = sorted(local.rglob("final.pt"), key=lambda p: len(p.parts)) if local.is_dir() else \
            ([local] if local.name.endswith(".pt") else [])
        if found:
            return found[0]
        run_id = mlflow.models.get_model_info(uri).run_id  # a pytorch-flavour model: its run holds final/final.pt
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"runs:/{run_id}/final/final.pt",
                                                        dst_path=str(dst / "run")))
    except Exception as err:  # noqa: BLE001 - unknown run / model / version, unreachable server
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise PredictError(f"{uri}: cannot fetch the model from MLflow ({resolved}): {first}") from None

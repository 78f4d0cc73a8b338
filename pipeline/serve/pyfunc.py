"""The final model as an MLflow pyfunc "predictor": a DataFrame of video paths in, predictions out.

`log_predictor(final_path, *, name="predictor", registered_model_name=None)` (inside an active MLflow run) logs
`VideoClassifier` (models from code: `pipeline/serve/pyfunc_model.py`, nothing pickled) with `models/final.pt` as its
artifact "final" and the prernn + pipeline code (code_paths), so
`mlflow models predict -m runs:/<run>/predictor -i in.csv -t csv --env-manager local` and
`mlflow models serve -m ... --env-manager local` work on it, and `prernn predict runs:/<run>/predictor ...` finds
the final.pt inside it.

Input: a DataFrame with column `path` (video file or frame folder; optional `depth_path`, else the `x_depth`
partner beside `x_color`). Output: a DataFrame `path, class, probability, error` (one row per input, in order;
`error` is "" for a prediction; a video that cannot be used gets class None, probability NaN and the reason), predicted in clip
mode exactly as `prernn predict` does (pipeline.serve.predictor.Predictor).

Regression models (final.pt meta `task: regression`, landmark alignment): the output is a DataFrame
`path, frame, landmarks, error` instead: `landmarks` is a JSON string [[x, y], ...] of the K landmarks (in [0, 1]
of the resized frame, x then y) of the LAST of the T frames sampled as in training (clip mode; the recurrent model
has then seen the whole clip; the same as the last row of `prernn predict --json` on that video), `frame` its
decoded frame index; a video that cannot be used gets frame -1, landmarks None and the reason. Not time-averaged:
the landmarks move from frame to frame, a mean over time would blur them. The signature logged with the model
(`signature(task)`) says which of the two layouts it returns; both are the task's (pipeline.training.tasks:
`Task.predict_row`, `Task.predict_columns`).
"""
from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc
import pandas as pd
import torch
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

from pipeline.core.checkpoint import RefusedFile, read_weights_only
from pipeline.serve.errors import PredictError
from pipeline.serve.predictor import Predictor
from pipeline.training.tasks import Task, task_from_entries

ROOT = Path(__file__).resolve().parents[2]
INPUT_COLUMNS = ("path", "depth_path")


class VideoClassifier(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper of pipeline.serve.predictor.Predictor (clip mode); its rows are the task's
    (`Task.predict_row`, `Task.predict_columns`)."""

    def load_context(self, context) -> None:
        self.predictor = Predictor.from_file(context.artifacts["final"])

    def predict(self, context, model_input, params=None):
        df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if "path" not in df.columns:
            raise ValueError(f"input needs a column 'path' (video files); got columns {list(df.columns)}")
        task, names = self.predictor.task, self.predictor.class_names
        rows = []
        for _, r in df.iterrows():
            path = str(r["path"])
            depth = r.get("depth_path") if "depth_path" in df.columns else None
            try:
                answers = self.predictor.clip_answers(Path(path), depth if isinstance(depth, str) and depth else None)
                rows.append(task.predict_row(path, answers, names))
            except (PredictError, OSError) as err:
                rows.append(task.predict_error_row(path, str(err)))
        return pd.DataFrame(rows, columns=[name for name, _, _ in task.predict_columns])


def signature(task: Task) -> ModelSignature:
    """The predictor's signature: a `path` (+ optional `depth_path`) column in, the task's columns out."""
    inp = Schema([ColSpec("string", "path"), ColSpec("string", "depth_path", required=False)])
    out = Schema([ColSpec(kind, name, required=required) for name, kind, required in task.predict_columns])
    return ModelSignature(inputs=inp, outputs=out)


def stored_task(final_path) -> Task:
    """The task recorded in a final.pt's meta (weights_only load: nothing unpickled); the default task of
    `task_from_entries` (classification) if none, or if the file does not load (Predictor.from_file reports an
    unusable file when the model loads)."""
    try:
        return task_from_entries(read_weights_only(final_path).get("meta") or {})
    except (RefusedFile, OSError, ValueError, AttributeError):
        return task_from_entries({})


def log_predictor(final_path, *, name: str = "predictor", registered_model_name: str | None = None,
                  metadata: dict | None = None):
    """Log the pyfunc predictor to the active MLflow run; returns mlflow's ModelInfo (`.model_uri`)."""
    return mlflow.pyfunc.log_model(
        name=name, python_model=str(ROOT / "pipeline" / "serve" / "pyfunc_model.py"), artifacts={"final": str(final_path)},
        code_paths=[str(ROOT / "prernn"), str(ROOT / "pipeline")], signature=signature(stored_task(final_path)),
        registered_model_name=registered_model_name, metadata=metadata,
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy", "pandas", "opencv-python-headless",
                          "pyarrow", f"mlflow=={mlflow.__version__}"])

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
mode exactly as `prernn predict` does (pipeline.serve.predict.Predictor).

Regression models (final.pt meta `task: regression`, landmark alignment): the output is a DataFrame
`path, frame, landmarks, error` instead: `landmarks` is a JSON string [[x, y], ...] of the K landmarks (in [0, 1]
of the resized frame, x then y) of the LAST of the T frames sampled as in training (clip mode; the recurrent model
has then seen the whole clip; the same as the last row of `prernn predict --json` on that video), `frame` its
decoded frame index; a video that cannot be used gets frame -1, landmarks None and the reason. Not time-averaged:
the landmarks move from frame to frame, a mean over time would blur them. The signature logged with the model
(`signature(task)`) says which of the two layouts it returns.
"""
from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc

ROOT = Path(__file__).resolve().parents[2]
INPUT_COLUMNS = ("path", "depth_path")
OUTPUT_COLUMNS = ("path", "class", "probability", "error")
REGRESSION_COLUMNS = ("path", "frame", "landmarks", "error")


class VideoClassifier(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper of pipeline.serve.predict.Predictor (clip mode)."""

    def load_context(self, context) -> None:
        from pipeline.serve.predict import Predictor

        self.predictor = Predictor.from_file(context.artifacts["final"])

    def predict(self, context, model_input, params=None):
        import numpy as np
        import pandas as pd

        from pipeline.serve.predict import PredictError

        df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if "path" not in df.columns:
            raise ValueError(f"input needs a column 'path' (video files); got columns {list(df.columns)}")
        regression = getattr(self.predictor, "task", "classification") == "regression"
        rows = []
        for _, r in df.iterrows():
            path = str(r["path"])
            depth = r.get("depth_path") if "depth_path" in df.columns else None
            if regression:
                rows.append(self._landmarks(path, depth if isinstance(depth, str) and depth else None))
                continue
            try:
                probs = self.predictor.clip_probs(Path(path), depth if isinstance(depth, str) and depth else None)
                k = int(np.argmax(probs))
                rows.append({"path": path, "class": self.predictor.class_names[k], "probability": float(probs[k]),
                             "error": ""})
            except (PredictError, OSError) as err:
                rows.append({"path": path, "class": None, "probability": float("nan"), "error": str(err)})
        return pd.DataFrame(rows, columns=list(REGRESSION_COLUMNS if regression else OUTPUT_COLUMNS))

    def _landmarks(self, path: str, depth) -> dict:
        """Regression: the last sampled frame's landmarks of one video, as a JSON string [[x, y], ...]."""
        import json

        from pipeline.serve.predict import PredictError

        try:
            frame, pts = self.predictor.clip_landmarks(Path(path), depth)[-1]
        except (PredictError, OSError) as err:
            return {"path": path, "frame": -1, "landmarks": None, "error": str(err)}
        return {"path": path, "frame": int(frame), "error": "",
                "landmarks": json.dumps([[round(float(x), 5), round(float(y), 5)] for x, y in pts])}


def signature(task: str = "classification"):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    inp = Schema([ColSpec("string", "path"), ColSpec("string", "depth_path", required=False)])
    if task == "regression":
        out = Schema([ColSpec("string", "path"), ColSpec("long", "frame"),
                      ColSpec("string", "landmarks", required=False), ColSpec("string", "error", required=False)])
    else:
        out = Schema([ColSpec("string", "path"), ColSpec("string", "class", required=False),
                      ColSpec("double", "probability"), ColSpec("string", "error", required=False)])
    return ModelSignature(inputs=inp, outputs=out)


def _task(final_path) -> str:
    """The task recorded in a final.pt's meta (weights_only load: nothing unpickled); classification if none."""
    import torch

    try:
        meta = torch.load(final_path, map_location="cpu", weights_only=True).get("meta") or {}
    except Exception:  # noqa: BLE001 - Predictor.from_file reports an unusable file when the model loads
        return "classification"
    return "regression" if meta.get("task") == "regression" else "classification"


def log_predictor(final_path, *, name: str = "predictor", registered_model_name: str | None = None,
                  metadata: dict | None = None):
    """Log the pyfunc predictor to the active MLflow run; returns mlflow's ModelInfo (`.model_uri`)."""
    import torch

    return mlflow.pyfunc.log_model(
        name=name, python_model=str(ROOT / "pipeline" / "serve" / "pyfunc_model.py"), artifacts={"final": str(final_path)},
        code_paths=[str(ROOT / "prernn"), str(ROOT / "pipeline")], signature=signature(_task(final_path)),
        registered_model_name=registered_model_name, metadata=metadata,
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy", "pandas", "opencv-python-headless",
                          "pyarrow", f"mlflow=={mlflow.__version__}"])

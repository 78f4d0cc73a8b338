"""The final model as an MLflow pyfunc "predictor": a DataFrame of video paths in, predictions out.

`log_predictor(final_path, *, name="predictor", registered_model_name=None)` (inside an active MLflow run) logs
`VideoClassifier` (models from code: `pipeline/pyfunc_model.py`, nothing pickled) with `models/final.pt` as its
artifact "final" and the prernn + pipeline code (code_paths), so
`mlflow models predict -m runs:/<run>/predictor -i in.csv -t csv --env-manager local` and
`mlflow models serve -m ... --env-manager local` work on it, and `prernn predict runs:/<run>/predictor ...` finds
the final.pt inside it.

Input: a DataFrame with column `path` (video file or frame folder; optional `depth_path`, else the `x_depth`
partner beside `x_color`). Output: a DataFrame `path, class, probability, error` (one row per input, in order;
`error` is "" for a prediction; a video that cannot be used gets class None, probability NaN and the reason), predicted in clip
mode exactly as `prernn predict` does (pipeline.predict.Predictor).
"""
from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc

ROOT = Path(__file__).resolve().parents[1]
INPUT_COLUMNS = ("path", "depth_path")
OUTPUT_COLUMNS = ("path", "class", "probability", "error")


class VideoClassifier(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper of pipeline.predict.Predictor (clip mode)."""

    def load_context(self, context) -> None:
        from pipeline.predict import Predictor

        self.predictor = Predictor.from_file(context.artifacts["final"])

    def predict(self, context, model_input, params=None):
        import numpy as np
        import pandas as pd

        from pipeline.predict import PredictError

        df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if "path" not in df.columns:
            raise ValueError(f"input needs a column 'path' (video files); got columns {list(df.columns)}")
        rows = []
        for _, r in df.iterrows():
            path = str(r["path"])
            depth = r.get("depth_path") if "depth_path" in df.columns else None
            try:
                probs = self.predictor.clip_probs(Path(path), depth if isinstance(depth, str) and depth else None)
                k = int(np.argmax(probs))
                rows.append({"path": path, "class": self.predictor.class_names[k], "probability": float(probs[k]),
                             "error": ""})
            except (PredictError, OSError) as err:
                rows.append({"path": path, "class": None, "probability": float("nan"), "error": str(err)})
        return pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    inp = Schema([ColSpec("string", "path"), ColSpec("string", "depth_path", required=False)])
    out = Schema([ColSpec("string", "path"), ColSpec("string", "class", required=False),
                  ColSpec("double", "probability"), ColSpec("string", "error", required=False)])
    return ModelSignature(inputs=inp, outputs=out)


def log_predictor(final_path, *, name: str = "predictor", registered_model_name: str | None = None,
                  metadata: dict | None = None):
    """Log the pyfunc predictor to the active MLflow run; returns mlflow's ModelInfo (`.model_uri`)."""
    import torch

    return mlflow.pyfunc.log_model(
        name=name, python_model=str(ROOT / "pipeline" / "pyfunc_model.py"), artifacts={"final": str(final_path)},
        code_paths=[str(ROOT / "prernn"), str(ROOT / "pipeline")], signature=signature(),
        registered_model_name=registered_model_name, metadata=metadata,
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy", "pandas", "opencv-python-headless",
                          "pyarrow", f"mlflow=={mlflow.__version__}"])

"""Models-from-code entry of the MLflow pyfunc predictor (MLflow runs this file when it loads the model).

Logged by `pipeline.serve.pyfunc.log_predictor` instead of a cloudpickled object, so loading the model unpickles nothing.
"""
import mlflow.models

from pipeline.serve.pyfunc import VideoClassifier

mlflow.models.set_model(VideoClassifier())

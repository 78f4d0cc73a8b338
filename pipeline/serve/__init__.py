"""The chosen model on new video: `prernn predict`, the MLflow pyfunc predictor and the logged/registered model."""

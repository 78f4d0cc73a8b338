"""Glue shared by the DVC stages: params, data, training, Ray Tune, MLflow, reports. Imports prernn."""

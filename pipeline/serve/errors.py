"""The error of `prernn predict` and the pyfunc predictor: an input or a model that cannot be used."""
from __future__ import annotations


class PredictError(RuntimeError):
    """An input or a model that cannot be used; str(err) is the one-line reason."""

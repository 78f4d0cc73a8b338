"""Point MLflow's tracking and registry at a test's own store, for that test only."""


def use_mlflow_store(monkeypatch, uri: str) -> None:
    """Set MLflow's tracking and registry URIs to `uri` until the test ends.

    Not mlflow.set_tracking_uri / set_registry_uri: their module globals and MLFLOW_*_URI variables would stay set
    for later tests (another test's MlflowClient then searches this test's registry); monkeypatch restores both
    the globals and the environment after the test, even where the code under test sets them again.
    """
    import mlflow.tracking._model_registry.utils as registry_utils
    import mlflow.tracking._tracking_service.utils as tracking_utils

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    monkeypatch.setattr(tracking_utils, "_tracking_uri", uri)
    monkeypatch.setattr(registry_utils, "_registry_uri", uri)

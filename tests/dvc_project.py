"""Helpers for the tests that run the pipeline through `dvc repro` in a temporary copy of the project
(tests/test_pipeline_e2e.py: classification, tests/test_regression_pipeline.py: task regression).

`make_project(root, overrides)` copies prernn/, pipeline/, stages/, dvc.yaml and .dvc/plots/ (the plot templates
and the offline page) into `root`, writes params.yaml =
this project's params.yaml with `overrides` merged over it (nested dicts merged, other values replaced), runs
`git init` + `dvc init` there and returns the environment to run `dvc` in (the venv's bin first on PATH, no
MLFLOW_TRACKING_URI / RAY_ADDRESS from the caller, so params.yaml's sqlite:///mlflow.db and a local Ray are used).
`run(args, cwd, env)` runs one command and fails the test with its output tails when it fails.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = merge(base.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def run(args, cwd, env, timeout: int = 600) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


def make_project(root: Path, overrides: dict) -> dict:
    """A git + DVC project in `root` holding a copy of this one's code and the merged params; returns its env."""
    for name in ("prernn", "pipeline", "stages"):
        shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", root / "dvc.yaml")
    params = merge(yaml.safe_load((ROOT / "params.yaml").read_text()), overrides)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("MLFLOW_REGISTRY_URI", None)  # an earlier test's mlflow.set_registry_uri sets it in os.environ
    env.pop("RAY_ADDRESS", None)
    for args in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"],
                 ["dvc", "config", "plots.html_template", "plots/offline.html"]):
        run(args, root, env)
    shutil.copytree(ROOT / ".dvc" / "plots", root / ".dvc" / "plots", ignore=shutil.ignore_patterns("vendor"))
    return env

"""The README's examples work as written: the library example runs and its comments state what it prints, and the
params example for your own videos is a valid params.yaml."""
import re
import subprocess
import sys
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]


def readme_block(after_heading: str, language: str) -> str:
    """The first ```language block after the README heading that starts with `after_heading`."""
    text = (ROOT / "README.md").read_text()
    return re.search(rf"## {re.escape(after_heading)}.*?```{language}\n(.*?)```", text, re.S).group(1)


def test_library_example_runs_and_its_comments_hold():
    code = readme_block("The library", "python")
    scope: dict = {}
    torch.manual_seed(0)
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["prernn"].candidate_layers(scope["cnn"]) == ["conv1", "conv2", "conv3", "fc6", "fc7"]
    assert scope["prernn"].default_candidates(scope["cnn"]) == ["fc6", "fc7"]
    assert scope["logits"].shape == (2, 8, 8)
    assert scope["prernn"].count_recurrent_parameters(scope["model"]) == 66048
    assert torch.allclose(scope["out"], scope["logits"][:, 0], atol=1e-5)
    assert set(scope["stats"]) == {"fc6"}


def test_your_videos_example_is_accepted_by_check_params(tmp_path):
    example = yaml.safe_load(readme_block("Running on your videos", "yaml"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in example.items():
        params[section].update(values)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    run = subprocess.run([sys.executable, "-m", "pipeline.serve.cli", "check-params", str(path)],
                         cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert params["data"]["source"] == "folder"

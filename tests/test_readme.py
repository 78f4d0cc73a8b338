"""The README's library example runs as written, and its comments state what it prints."""
import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def test_library_example_runs_and_its_comments_hold():
    text = (ROOT / "README.md").read_text()
    code = re.search(r"## The library.*?```python\n(.*?)```", text, re.S).group(1)
    scope: dict = {}
    torch.manual_seed(0)
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["prernn"].candidate_layers(scope["cnn"]) == ["conv1", "conv2", "conv3", "fc6", "fc7"]
    assert scope["prernn"].default_candidates(scope["cnn"]) == ["fc6", "fc7"]
    assert scope["logits"].shape == (2, 8, 8)
    assert scope["prernn"].count_recurrent_parameters(scope["model"]) == 66048
    assert torch.allclose(scope["out"], scope["logits"][:, 0], atol=1e-5)
    assert set(scope["stats"]) == {"fc6"}

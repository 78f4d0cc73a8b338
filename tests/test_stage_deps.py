"""tools.stage_deps: each stage's code deps in dvc.yaml are the project modules the stage imports."""
import textwrap
from pathlib import Path

import pytest
import yaml

from tools import stage_deps
from tools.stage_deps import DepsError, check, closure, code_files, rewrite, write

ROOT = Path(__file__).resolve().parents[1]

DVC_YAML = """\
# a comment that stays
stages:
  a:
    cmd: python -m stages.a --out out/a
    deps:
      - stages/a.py   # the stage
      - data/in
    params:
      - a
    outs:
      - out/a:
          persist: true
  b:
    cmd: echo no python module here
    deps:
      - pipeline/x.py
"""


def _files(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text))


@pytest.fixture
def project(tmp_path):
    """stages.a imports pipeline.x inside a function; x imports y relatively and z through `from pipeline import`;
    z imports the prernn package, whose __init__ imports prernn.core; prernn.unused is imported by no one;
    pipeline.x names pipeline/entry.py by path (an MLflow models-from-code file)."""
    _files(tmp_path, {
        "stages/__init__.py": "",
        "stages/a.py": "import sys\n\ndef main():\n    from pipeline.x import run\n    run()\n",
        "pipeline/__init__.py": "",
        "pipeline/x.py": "from . import y\nfrom pipeline import z\nENTRY = 'entry.py'\n\ndef run():\n    pass\n",
        "pipeline/y.py": "import os\n",
        "pipeline/z.py": "import prernn\n",
        "pipeline/entry.py": "",
        "prernn/__init__.py": "from .core import f\n",
        "prernn/core.py": "def f():\n    pass\n",
        "prernn/unused.py": "",
        "dvc.yaml": DVC_YAML,
    })
    return tmp_path


def test_closure_follows_lazy_relative_from_package_and_path_imports(project):
    assert code_files(project, "stages.a") == [
        "stages/a.py", "pipeline/__init__.py", "pipeline/entry.py", "pipeline/x.py", "pipeline/y.py",
        "pipeline/z.py", "prernn/__init__.py", "prernn/core.py", "stages/__init__.py"]
    assert stage_deps.chain(closure(project, "stages.a"), "prernn.core") == \
        "stages.a -> pipeline.x -> pipeline.z -> prernn -> prernn.core"


def test_check_names_each_file_a_stage_runs_but_does_not_depend_on(project):
    problems = check(project)
    assert len(problems) == 8  # every closure file but stages/a.py itself
    assert ("dvc.yaml: stage a: runs prernn/core.py (stages.a -> pipeline.x -> pipeline.z -> prernn -> prernn.core) "
            "but does not list it in deps") in problems
    assert not any("stage b" in p for p in problems)  # no `python -m` module: its deps are its own business


def test_check_accepts_a_package_folder_and_refuses_a_dep_the_stage_does_not_run(project):
    dvc = project / "dvc.yaml"
    deps = "      - stages/a.py\n      - stages/__init__.py\n      - pipeline\n      - prernn\n      - data/in\n"
    dvc.write_text(DVC_YAML.replace("      - stages/a.py   # the stage\n      - data/in\n", deps))
    assert check(project) == []
    dvc.write_text(dvc.read_text().replace("      - data/in\n", "      - data/in\n      - prernn/unused.py\n", 1))
    assert check(project) == ["dvc.yaml: stage a: lists prernn/unused.py in deps, but stages.a imports nothing there"]


def test_write_derives_the_code_deps_and_keeps_every_other_line(project):
    dvc = project / "dvc.yaml"
    assert write(project) == ["a"]
    assert check(project) == []
    spec = yaml.safe_load(dvc.read_text())["stages"]
    assert spec["a"]["deps"] == code_files(project, "stages.a") + ["data/in"]
    assert spec["b"]["deps"] == ["pipeline/x.py"]
    def others(text):  # every line but the code entries of a deps list
        return [line for line in text.splitlines()
                if not (line.startswith("      - ") and stage_deps.is_code(line.split()[1]))]

    assert others(dvc.read_text()) == others(DVC_YAML)
    assert write(project) == []  # derived once, nothing changes the second time


def test_rewrite_puts_the_code_deps_where_the_first_code_dep_was():
    text = "stages:\n  s:\n    cmd: x\n    deps:\n      - data/a\n      - pipeline/old.py\n      - data/b\n"
    assert rewrite(text, {"s": ["stages/s.py", "pipeline/new.py"]}) == (
        "stages:\n  s:\n    cmd: x\n    deps:\n      - data/a\n      - stages/s.py\n      - pipeline/new.py\n"
        "      - data/b\n")


@pytest.mark.parametrize("line, message", [
    ("import importlib\nm = importlib.import_module('pipeline.y')\n", "pipeline/x.py:2: import_module(...)"),
    ("m = __import__('pipeline.y')\n", "pipeline/x.py:1: __import__(...)"),
    ("from pipeline.gone import thing\n", "pipeline/x.py:1: imports pipeline.gone, which is not a module"),
])
def test_imports_it_cannot_follow_are_errors_naming_file_and_line(project, line, message):
    (project / "pipeline" / "x.py").write_text(line)
    with pytest.raises(DepsError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        closure(project, "stages.a")


def test_this_projects_dvc_yaml_lists_exactly_the_code_each_stage_runs():
    problems = check(ROOT)
    assert problems == [], "\n".join(problems + ["fix: python -m tools.stage_deps --write"])


def test_the_search_stage_depends_on_the_code_ray_trials_run():
    deps = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["search"]["deps"]
    assert {"pipeline/search/trainable.py", "pipeline/training/trainer.py", "pipeline/core/storage.py", "pipeline/core/checkpoint.py",
            "pipeline/core/params.py", "prernn/cells.py"} <= set(deps)


@pytest.mark.parametrize("stage", ["ingest", "extract"])
def test_ingest_and_extract_depend_on_core_and_data_code_only(stage):
    """A change to the library, the search or the training (a recurrent kernel, a trial) does not rerun the hours
    of ingestion and extraction: those stages import no registry (pipeline.core.params is plain data)."""
    deps = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]["deps"]
    code = [d for d in deps if isinstance(d, str) and stage_deps.is_code(d)]
    assert "pipeline/core/params.py" in code and f"stages/{stage}.py" in code
    upper = [d for d in code if d.startswith(("prernn/", "pipeline/search/", "pipeline/training/", "pipeline/report/",
                                              "pipeline/serve/", "pipeline/checks"))]
    assert upper == []
    assert set(code) == set(code_files(ROOT, f"stages.{stage}"))


def test_a_dropped_dep_of_this_project_is_reported(tmp_path):
    text = (ROOT / "dvc.yaml").read_text()
    evaluate = text.index("  evaluate:")
    dropped = text[:evaluate] + text[evaluate:].replace("      - pipeline/core/tracking.py\n", "", 1)
    (tmp_path / "dvc.yaml").write_text(dropped)
    problems = check(ROOT, tmp_path / "dvc.yaml")
    assert len(problems) == 1 and problems[0].startswith("dvc.yaml: stage evaluate: runs pipeline/core/tracking.py (")


def test_cli_exit_codes(project, capsys):
    assert stage_deps.main(["--root", str(project)]) == 1
    assert "stage_deps: run `python -m tools.stage_deps --write`" in capsys.readouterr().err
    assert stage_deps.main(["--root", str(project), "--write"]) == 0
    assert stage_deps.main(["--root", str(project)]) == 0
    (project / "pipeline" / "x.py").write_text("__import__('os')\n")
    assert stage_deps.main(["--root", str(project)]) == 2
    assert "pipeline/x.py:1: __import__(...) imports by a runtime value" in capsys.readouterr().err

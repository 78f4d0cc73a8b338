"""Nothing lost: in a real DVC project (a temp copy of the pipeline), the extract stage SIGKILLed mid-write
leaves the previous data/clips and reports/extract.json intact, and `dvc repro` afterwards reruns just
extract (and what depends on it), not ingest."""
import glob
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DVC = Path(sys.executable).with_name("dvc")


def _digest(root: Path) -> dict[str, str]:
    files = sorted(p for p in list(root.joinpath("data/clips").rglob("*")) + [root / "reports/extract.json"]
                   if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture()
def project(tmp_path):
    assert DVC.exists(), f"{DVC}: dvc is a pinned requirement and must be installed beside this python"
    root = tmp_path / "proj"
    root.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, root / name)
    for name in ("prernn", "pipeline", "stages"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    p = yaml.safe_load((root / "params.yaml").read_text())
    p["data"]["synthetic"].update({"classes": ["swipe_left", "swipe_right", "swipe_up", "swipe_down"],
                                   "clips_per_class": 4, "frames": 8, "size": 16})
    p["extract"].update({"frames": 4, "size": 16, "modalities": ["rgb"], "workers": 1})
    p["pretrain"]["modalities"], p["evaluate"]["modalities"] = ["rgb"], ["rgb"]
    (root / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "PYTHONPATH"))}
    env.update(PATH=f"{DVC.parent}{os.pathsep}{env.get('PATH', '')}", DVC_NO_ANALYTICS="1")
    for cmd in (["git", "init", "-q", "."], [str(DVC), "init", "-q"]):
        subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True, timeout=60)
    return root, env


def _dvc(root, env, *args, timeout=180):
    out = subprocess.run([str(DVC), *args], cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout + out.stderr


@pytest.mark.slow  # dvc repro
def test_extract_killed_mid_write_keeps_old_clips_and_repro_reruns_only_it(project):
    root, env = project
    _dvc(root, env, "repro", "extract")
    before = _digest(root)
    assert any(k.endswith(".arrow") for k in before) and "reports/extract.json" in before

    p = yaml.safe_load((root / "params.yaml").read_text())
    p["extract"]["size"] = 24
    (root / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    proc = subprocess.Popen([str(DVC), "repro", "extract"], cwd=root, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, tmp = time.monotonic() + 120, []
        while time.monotonic() < deadline and proc.poll() is None and not tmp:
            tmp = glob.glob(str(root / "data" / ".clips.*.tmp"))
            time.sleep(0.01)
        assert tmp, "the extract stage never started writing its temporary output"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # dvc and the stage it runs: this test's own process group
        except ProcessLookupError:
            pass
        proc.wait(30)
    assert _digest(root) == before  # the previous outputs, byte for byte

    # what DVC would rerun: extract (its param changed) and the stages below it (never run here); not ingest
    status = _dvc(root, env, "status")
    stale = {line[:-1] for line in status.splitlines() if line.endswith(":") and not line.startswith((" ", "\t"))}
    assert "extract" in stale and "ingest" not in stale, status
    assert stale <= {"extract", "pretrain", "search", "select", "evaluate"}, status

    out = _dvc(root, env, "repro", "extract")
    assert "Running stage 'extract'" in out and "Running stage 'ingest'" not in out, out
    after = _digest(root)
    assert after != before and set(after) == set(before)
    assert not glob.glob(str(root / "data" / ".clips.*.tmp"))  # the killed write's leftovers are gone
    import pyarrow as pa

    with pa.ipc.open_file(root / "data" / "clips" / "train-000.arrow") as reader:
        assert reader.schema.field("rgb").type.shape == [4, 24, 24, 3]

"""A full disk: the extract stage writing onto a 3 MB tmpfs that fills up fails with one line naming the path,
keeps the previous clips and report, leaves no partial Arrow file or temporary, and a rerun with space succeeds."""
import hashlib
import json

import pytest

from pipeline.core.params import DataParams, SyntheticParams
from pipeline.data.sources import ingest, write_manifest
from tests.disk_fixtures import fill, hidden_leftovers, small_fs  # noqa: F401 - the fixture

EXTRACT = {"frames": 4, "size": 16, "modalities": ["rgb", "flow"], "workers": 1}


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _extract(tmp_path, manifest, out, report, capsys):
    from stages.extract import main

    params = tmp_path / "params.yaml"
    params.write_text("extract: " + json.dumps(EXTRACT) + "\n")
    try:
        main(["--params", str(params), "--manifest", str(manifest), "--out", str(out), "--report", str(report),
              "--no-progress"])
        code = 0
    except SystemExit as err:
        code = err.code
    return code, capsys.readouterr().err


def _manifest(tmp_path, clips_per_class: int):
    """A tiny synthetic ingest (two classes, 16 px) under tmp_path/ingest; returns its manifest.csv."""
    data = DataParams(synthetic=SyntheticParams(classes=["swipe_left", "swipe_right"], clips_per_class=clips_per_class,
                                                frames=6, size=16))
    rows, _ = ingest(data, tmp_path / "ingest")
    manifest = tmp_path / "ingest" / "manifest.csv"
    write_manifest(rows, manifest)
    return manifest


def test_extract_onto_a_full_disk(tmp_path, small_fs, capsys):
    manifest = _manifest(tmp_path, clips_per_class=4)
    out, report = small_fs / "clips", small_fs / "extract.json"
    code, err = _extract(tmp_path, manifest, out, report, capsys)
    assert code == 0 and err == ""
    before, report_before = _digests(out), report.read_text()

    filler = fill(small_fs, leave=16 * 1024)  # less than one new set of clips needs
    code, err = _extract(tmp_path, manifest, out, report, capsys)
    assert code == 1
    line, = err.splitlines()
    assert line.startswith(f"extract: {out}: no space left on device (its filesystem: 3.0 MB, ")
    assert "Traceback" not in err and "previous output is unchanged" in line
    assert _digests(out) == before and report.read_text() == report_before
    assert hidden_leftovers(small_fs) == []  # no .clips.*.tmp folder, no .train-000.partial

    filler.unlink()
    code, err = _extract(tmp_path, manifest, out, report, capsys)
    assert code == 0 and err == ""
    assert _digests(out) == before  # the same inputs give the same files
    assert json.loads(report.read_text())["kept"] == 8


def test_extract_whose_report_does_not_fit_keeps_the_previous_clips(tmp_path, small_fs, capsys):
    manifest = _manifest(tmp_path, clips_per_class=3)
    out, report = tmp_path / "clips", small_fs / "extract.json"
    assert _extract(tmp_path, manifest, out, report, capsys)[0] == 0
    before, report_before = _digests(out), report.read_text()
    fill(small_fs, leave=0)
    code, err = _extract(tmp_path, manifest, out, report, capsys)
    assert code == 1 and err.splitlines() == [err.strip()] and err.startswith(f"extract: {report}: no space left")
    assert _digests(out) == before and report.read_text() == report_before  # neither output replaced
    assert hidden_leftovers(small_fs) == [] and hidden_leftovers(tmp_path / "clips") == []


@pytest.mark.slow
def test_search_with_its_storage_on_a_full_disk(tmp_path, small_fs, monkeypatch, capsys):
    """One trial of 2 epochs, its ~2 MB checkpoints in a 3 MB storage_path: epoch 1's fits, epoch 2's does not."""
    import subprocess
    import zipfile

    import torch
    import yaml

    from stages import search
    from tests.search_fixtures import pretrained_search_project, search_args

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    root = pretrained_search_project(tmp_path / "proj", {"epochs": 2, "layers": [["fc6"]], "baselines": [],
                                                         "storage_path": str(small_fs / "ray")}, "full-disk")
    out = small_fs / "search"
    out.mkdir()
    (out / "trials.json").write_text("[]\n")  # the previous run's output
    args = search_args(root)
    args[args.index("--out") + 1] = str(out)
    capsys.readouterr()
    with pytest.raises(SystemExit) as failed:
        search.main(args)
    line = str(failed.value.code)
    assert line.startswith(f"search: search.storage_path: {small_fs / 'ray'}: no space left on device "
                           "(its filesystem: 3.0 MB, ") and "\n" not in line
    assert sorted(p.name for p in out.iterdir()) == ["trials.json"] and (out / "trials.json").read_text() == "[]\n"
    for pt in (small_fs / "ray").rglob("*.pt"):  # nothing cut short where the rerun's restore reads
        assert zipfile.is_zipfile(pt), pt
    for js in (small_fs / "ray").rglob("*.json"):
        json.loads(js.read_text())

    subprocess.run(["mount", "-o", "remount,size=30m", str(small_fs)], check=True)  # space again
    search.main(args)
    trials = json.loads((out / "trials.json").read_text())
    assert [(t["name"], t["status"], [h["epoch"] for h in t["history"]]) for t in trials] == \
        [("prernn-gru-fc6", "ok", [1, 2])]
    for pt in (small_fs / "ray").rglob("checkpoint_*/*.pt"):
        torch.load(pt, weights_only=True)
    assert yaml.safe_load((root / "params.yaml").read_text())["search"]["storage_path"] == str(small_fs / "ray")

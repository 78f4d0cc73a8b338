"""A small real filesystem for the full-disk tests: a 3 MB tmpfs mounted under the test's tmp_path (needs root
or CAP_SYS_ADMIN; skipped, saying so, where it cannot be mounted), unmounted afterwards whatever happens."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest


@pytest.fixture
def small_fs(tmp_path):
    """A 3 MB tmpfs at tmp_path/"small"; yields its path."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for the full-disk test (needs root): {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)  # a process still holds a file there


def fill(mnt: Path, leave: int) -> Path:
    """Write a filler file so that about `leave` bytes stay free on `mnt`; returns it (delete it to free space)."""
    st = os.statvfs(mnt)
    filler = mnt / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(st.f_bavail * st.f_frsize - leave, 0))
    return filler


def hidden_leftovers(folder: Path) -> list[str]:
    """Temporaries and partial files anywhere under `folder` (names starting with a dot)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*"))

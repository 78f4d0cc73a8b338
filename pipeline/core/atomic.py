"""Atomic outputs: write to a temporary sibling, then rename over the target.

An interrupted stage therefore leaves either the previous output or the new one, never half of one.
`space_for(path)` turns a write that runs out of space (ENOSPC, EDQUOT) into `DiskFull`, one line naming the
path; around `atomic_path` the partial temporary is gone by then and the previous output is left as it was.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(OSError):
    """A write that ran out of space; str(err) is one line naming the path and its filesystem's free space."""


def _mb(n: float) -> str:
    return f"{n / 2**20:.1f} MB"


def _statvfs(path: str | os.PathLike):
    """os.statvfs of `path` or of its nearest existing parent; None if that fails (or `path` is a URI)."""
    if "://" in str(path):
        return None
    probe = Path(os.path.abspath(path))
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return os.statvfs(probe)
    except OSError:
        return None


def disk_full_message(path: str | os.PathLike,
                      then: str = "the previous output is unchanged, free some space and rerun") -> str:
    """'<path>: no space left on device (its filesystem: N MB, M MB free now); <then>' for the path that ran out."""
    st = _statvfs(path)
    where = f" (its filesystem: {_mb(st.f_blocks * st.f_frsize)}, {_mb(st.f_bavail * st.f_frsize)} free now)" if st else ""
    return f"{path}: no space left on device{where}; {then}"


def out_of_space(err: BaseException | str | None) -> bool:
    """Whether an exception (or its causes) or an error text is an out-of-space error (ENOSPC, EDQUOT)."""
    seen = set()
    while isinstance(err, BaseException) and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in OUT_OF_SPACE:
            return True
        if out_of_space(str(err)):
            return True
        err = err.__cause__ or err.__context__
    if isinstance(err, str):
        text = err.lower()
        return any(f"[errno {e}]" in text or os.strerror(e).lower() in text for e in OUT_OF_SPACE)
    return False


def nearly_full(path: str | os.PathLike, margin: int = 2**20) -> bool:
    """Whether the local filesystem holding `path` has less than `margin` bytes free (False for a URI)."""
    st = _statvfs(path)
    return st is not None and st.f_bavail * st.f_frsize < margin


@contextlib.contextmanager
def space_for(path: str | os.PathLike) -> Iterator[None]:
    """Re-raise an out-of-space OSError from the block as DiskFull naming `path` (other errors pass through)."""
    try:
        yield
    except DiskFull:
        raise
    except OSError as err:
        if err.errno not in OUT_OF_SPACE:
            raise
        full = DiskFull(disk_full_message(path))
        full.errno = err.errno
        raise full from None


def remove_stale(target: Path) -> list[Path]:
    """Remove the temporaries an earlier, killed write of `target` left beside it (SIGKILL skips the cleanup).

    Only names of the exact form `.{target.name}.<8 random chars>.tmp` (tempfile.mkdtemp's) are removed, so
    another target's temporaries are never touched. One writer per target is assumed (DVC locks the outputs).
    """
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.[a-z0-9_]{{8}}\.tmp$")
    stale = [p for p in target.parent.iterdir() if pattern.match(p.name)] if target.parent.is_dir() else []
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return stale


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success rename it to `target` (file or folder).

    On an exception the temporary path is removed and `target` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    staged = tmp / target.name
    try:
        yield staged
        if not staged.exists():
            raise FileNotFoundError(f"atomic write of {target}: nothing was written to {staged}")
        if target.is_dir() and not target.is_symlink():
            old = tmp / (target.name + ".old")
            os.replace(target, old)
            os.replace(staged, target)
        else:
            os.replace(staged, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(target: str | os.PathLike, text: str) -> None:
    """Write `text` to `target` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def write_json(target: str | os.PathLike, obj) -> None:
    """Write `obj` as indented JSON to `target` atomically."""
    write_text(target, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")

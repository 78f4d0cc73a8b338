"""Where the search keeps its Ray results: a local/NFS folder or an object store URI (pyarrow filesystems).

`StoragePath.resolve(search.storage_path, base_dir)`: a plain path (relative to `base_dir`; on a multi-node
cluster it must be a shared mount such as NFS, at the same path on every node) or a URI that
`pyarrow.fs.FileSystem.from_uri` understands (`s3://bucket/prefix`, `gs://bucket/prefix`, `hdfs://...`,
`file:///shared/path`), which Ray Tune then uses for trial checkpoints and the experiment state. The few
driver-side files (the search's `prernn_search.json`) go through the same filesystem. An S3-compatible store that is
not AWS (MinIO, Ceph, moto) is named by the environment, not the URI: `AWS_ENDPOINT_URL_S3` (or `AWS_ENDPOINT_URL`),
which pyarrow's S3FileSystem, boto3 and s3fs all read, on the driver and on every Ray node.
"""
from __future__ import annotations

import fnmatch
import json
import os
import shutil
import zipfile
from pathlib import Path

import pyarrow.fs

from pipeline.core.params import ParamsError


class StoragePath:
    """A folder on a local path or behind a pyarrow filesystem URI; `str()` is what Ray's storage_path takes."""

    def __init__(self, uri: str, local: Path | None = None):
        self.uri, self.local = uri, local

    @classmethod
    def resolve(cls, value: str, base_dir: str | os.PathLike) -> "StoragePath":
        if "://" in value:
            if "?" in value:  # pyarrow's `?endpoint_override=...`: lost on the experiment folders joined below it
                raise ParamsError(f"search.storage_path: {value!r}: a URI with options after '?'; expected a plain "
                                  "URI such as s3://bucket/prefix, with the endpoint of an S3-compatible store in "
                                  "AWS_ENDPOINT_URL_S3 on the driver and every Ray node (docs/guide/team.md)")
            return cls(value.rstrip("/"))
        path = Path(value)
        return cls("", (path if path.is_absolute() else Path(base_dir) / path).resolve())

    def _fs(self):
        fs, path = pyarrow.fs.FileSystem.from_uri(self.uri)
        return fs, path

    def __truediv__(self, name: str) -> "StoragePath":
        if self.local is not None:
            return StoragePath("", self.local / name)
        return StoragePath(f"{self.uri}/{name}")

    def __lt__(self, other: "StoragePath") -> bool:
        return str(self) < str(other)

    def __str__(self) -> str:
        return str(self.local) if self.local is not None else self.uri

    @property
    def name(self) -> str:
        return self.local.name if self.local is not None else self.uri.rsplit("/", 1)[-1]

    def exists(self) -> bool:
        if self.local is not None:
            return self.local.exists()
        fs, path = self._fs()
        return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound

    def read_bytes(self) -> bytes:
        if self.local is not None:
            return self.local.read_bytes()
        fs, path = self._fs()
        with fs.open_input_stream(path) as fh:
            return fh.read()

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def glob(self, pattern: str) -> list["StoragePath"]:
        """The files and folders below this one whose relative path matches `pattern` (fnmatch, `/`-separated,
        one path part per pattern part: `trial_*/checkpoint_*/*.pt`), sorted; [] when this folder is missing."""
        parts = pattern.split("/")
        if self.local is not None:
            return sorted(StoragePath("", p) for p in self.local.glob(pattern)) if self.local.is_dir() else []
        fs, root = self._fs()
        if fs.get_file_info(root).type != pyarrow.fs.FileType.Directory:
            return []
        infos = fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=len(parts) > 1))
        out = []
        for info in infos:
            rel = info.path[len(root.rstrip("/")) + 1:].split("/")
            if len(rel) == len(parts) and all(fnmatch.fnmatchcase(a, b) for a, b in zip(rel, parts)):
                out.append(StoragePath(f"{self.uri}/{'/'.join(rel)}"))
        return sorted(out)

    def write_text(self, text: str) -> None:
        if self.local is not None:
            self.local.parent.mkdir(parents=True, exist_ok=True)
            self.local.write_text(text)
            return
        fs, path = self._fs()
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(path) as fh:
            fh.write(text.encode())

    def unlink(self) -> None:
        """Remove this file (nothing when it is missing)."""
        if self.local is not None:
            self.local.unlink(missing_ok=True)
        elif self.exists():
            fs, path = self._fs()
            fs.delete_file(path)

    def rmtree(self) -> None:
        if self.local is not None:
            shutil.rmtree(self.local, ignore_errors=True)
            return
        if self.exists():
            fs, path = self._fs()
            fs.delete_dir(path)


def remove_partial_writes(folder: str | os.PathLike, since: float) -> list[Path]:
    """Remove what writes cut short by a full disk left under a local `folder` since time `since` (epoch s).

    Ray writes its experiment state, trial errors and checkpoints in place, so a full disk leaves them truncated,
    and a later `Tuner.restore` reads them: where Ray's state does not load, the rerun continues each trial from
    its newest whole checkpoint instead (pipeline.search.tuner.restore_problem). Removed: JSON files that do not parse, empty pickles, and checkpoint folders holding a
    `.pt` file that is not a whole zip archive (torch.save's format). Only files modified since `since` are
    looked at, so another search's finished files are never touched. Returns what was removed.
    """
    removed = []
    root = Path(folder)
    if not root.is_dir():
        return removed
    for path in sorted(root.rglob("*")):
        try:
            if not path.is_file() or path.stat().st_mtime < since:
                continue
            if path.suffix == ".json":
                try:
                    json.loads(path.read_text())
                    continue
                except (ValueError, UnicodeDecodeError):
                    pass
            elif path.suffix == ".pkl" and path.stat().st_size == 0:
                pass
            elif path.suffix == ".pt" and path.parent.name.startswith("checkpoint_") and not zipfile.is_zipfile(path):
                shutil.rmtree(path.parent, ignore_errors=True)
                removed.append(path.parent)
                continue
            else:
                continue
            path.unlink()
            removed.append(path)
        except FileNotFoundError:  # inside a checkpoint folder removed above
            continue
    return removed

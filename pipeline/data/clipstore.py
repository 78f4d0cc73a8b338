"""Clips in Arrow IPC files: `{split}-{shard:03d}.arrow`, one row per clip, memory-mappable.

Columns: one fixed_shape_tensor uint8 column per modality (rgb/flow (T,H,W,3), depth (T,H,W,1)),
`label` int64, `video_id` string, `path` string. Schema metadata (JSON bytes): `prernn.class_names`,
`prernn.extract` (the extract params), `prernn.normalization` ({modality: {"mean", "std"}} per
channel of x/255 over the train split), `prernn.modalities`.

Writing is two-phase because the normalisation constants are only known after every train clip
is seen: `ClipWriter.add()` streams clips into per-split shards (a new shard once `shard_bytes` is
reached), `ClipWriter.finish(meta)` re-writes each shard with the final schema metadata.

Reading: `open_clip_file(path)` memory-maps one file and checks that it is a whole clip file (the Arrow file
footer, the label / video_id / path columns, the prernn metadata, every record batch readable and inside the
file); a file cut short, overwritten or written by something else raises `ClipFileError` naming it. Every
reader (`read_meta`, `pipeline.data.dataset`) opens files through it, so a stage stops on a bad file before training.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa

CHANNELS = {"rgb": 3, "flow": 3, "depth": 1}
REQUIRED_COLUMNS = ("label", "video_id", "path")
META_KEYS = ("prernn.class_names", "prernn.extract", "prernn.normalization", "prernn.modalities")
BATCH_ROWS = 16


def clip_schema(modalities: list[str], frames: int, size: int, meta: dict | None = None,
                landmarks: int | None = None) -> pa.Schema:
    """The Arrow schema of a clip file; `meta` values are stored as JSON under their keys.

    `landmarks` K (task: regression) adds a `landmarks` fixed_shape_tensor float32 (T, K, 2) column.
    """
    fields = [pa.field(m, pa.fixed_shape_tensor(pa.uint8(), (frames, size, size, CHANNELS[m]))) for m in modalities]
    if landmarks:
        fields.append(pa.field("landmarks", pa.fixed_shape_tensor(pa.float32(), (frames, int(landmarks), 2))))
    fields += [pa.field("label", pa.int64()), pa.field("video_id", pa.string()), pa.field("path", pa.string())]
    md = {k: json.dumps(v) for k, v in (meta or {}).items()}
    return pa.schema(fields, metadata=md or None)


class ChannelStats:
    """Running per-channel mean/std of x/255 over uint8 arrays (..., C), in float64."""

    def __init__(self, channels: int):
        self.n, self.s, self.ss = 0, np.zeros(channels), np.zeros(channels)

    def add_sums(self, n: int, s: np.ndarray, ss: np.ndarray) -> None:
        self.n += n
        self.s += s
        self.ss += ss

    @staticmethod
    def sums(arr: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
        """(count, sum, sum of squares) per channel of x/255 for a uint8 array (..., C), via histograms."""
        c = arr.shape[-1]
        flat = arr.reshape(-1, c)
        hist = np.stack([np.bincount(flat[:, k], minlength=256) for k in range(c)]).astype(np.float64)  # (C, 256)
        v = np.arange(256) / 255.0
        return len(flat), hist @ v, hist @ (v * v)

    def result(self) -> dict:
        if self.n == 0:
            return {"mean": [0.5] * len(self.s), "std": [0.25] * len(self.s)}
        mean = self.s / self.n
        std = np.sqrt(np.maximum(self.ss / self.n - mean ** 2, 0.0))
        return {"mean": [round(float(v), 6) for v in mean], "std": [round(float(max(v, 1e-3)), 6) for v in std]}


class ClipWriter:
    """Stream clips into `out_dir/{split}-{shard:03d}.arrow`; call finish(meta) once at the end."""

    def __init__(self, out_dir: Path, modalities: list[str], frames: int, size: int, shard_bytes: int,
                 splits=("train", "val", "test"), landmarks: int | None = None):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.modalities, self.frames, self.size = list(modalities), frames, size
        self.landmarks = landmarks  # K, or None: no landmarks column (clip dicts then carry "landmarks" (T, K, 2))
        self.schema = clip_schema(self.modalities, frames, size, landmarks=landmarks)
        self.shard_bytes = shard_bytes
        self.splits = list(splits)
        self._state = {s: {"shard": 0, "bytes": 0, "writer": None, "rows": []} for s in self.splits}
        self.files: list[Path] = []

    def _flush(self, split: str) -> None:
        st = self._state[split]
        if not st["rows"]:
            return
        if st["writer"] is None:
            path = self.out_dir / f".{split}-{st['shard']:03d}.partial"
            st["writer"] = pa.ipc.new_file(str(path), self.schema)
            self.files.append(path)
        cols = []
        for m in self.modalities:
            arr = np.stack([r[m] for r in st["rows"]])  # (n, T, H, W, C)
            cols.append(pa.ExtensionArray.from_storage(
                self.schema.field(m).type,
                pa.FixedShapeTensorArray.from_numpy_ndarray(arr).storage))
        if self.landmarks:
            arr = np.stack([np.asarray(r["landmarks"], np.float32) for r in st["rows"]])  # (n, T, K, 2)
            cols.append(pa.ExtensionArray.from_storage(
                self.schema.field("landmarks").type, pa.FixedShapeTensorArray.from_numpy_ndarray(arr).storage))
        cols += [pa.array([r["label"] for r in st["rows"]], pa.int64()),
                 pa.array([r["video_id"] for r in st["rows"]], pa.string()),
                 pa.array([r["path"] for r in st["rows"]], pa.string())]
        batch = pa.record_batch(cols, schema=self.schema)
        st["writer"].write_batch(batch)
        st["bytes"] += batch.nbytes
        st["rows"] = []
        if st["bytes"] >= self.shard_bytes:
            st["writer"].close()
            st["writer"], st["bytes"] = None, 0
            st["shard"] += 1

    def add(self, split: str, clip: dict[str, np.ndarray], label: int, video_id: str, path: str) -> None:
        """Append one clip (modality -> uint8 (T,H,W,C)) to `split`."""
        st = self._state[split]
        st["rows"].append({**clip, "label": int(label), "video_id": video_id, "path": path})
        if len(st["rows"]) >= BATCH_ROWS:
            self._flush(split)

    def finish(self, meta: dict) -> list[Path]:
        """Close every shard, re-write them with `meta` in the schema; an empty split gets one empty file."""
        for s in self.splits:
            self._flush(s)
            st = self._state[s]
            if st["writer"] is not None:
                st["writer"].close()
                st["writer"] = None
            if st["shard"] == 0 and not any(f.name.startswith(f".{s}-") for f in self.files):
                path = self.out_dir / f".{s}-000.partial"
                pa.ipc.new_file(str(path), self.schema).close()
                self.files.append(path)
        schema = self.schema.with_metadata({k: json.dumps(v) for k, v in meta.items()})
        final = []
        for part in self.files:
            target = part.with_name(part.name[1:].replace(".partial", ".arrow"))
            with pa.memory_map(str(part)) as src, pa.ipc.open_file(src) as reader:
                with pa.ipc.new_file(str(target), schema) as w:
                    for i in range(reader.num_record_batches):
                        w.write_batch(reader.get_batch(i).replace_schema_metadata(schema.metadata))
            part.unlink()
            final.append(target)
        return sorted(final)


class ClipFileError(ValueError):
    """A clip file that cannot be used (cut short, overwritten, not an extract output); str(err) names it."""


def open_clip_file(path: Path, *, check_batches: bool = True) -> pa.RecordBatchFileReader:
    """Memory-map `path` and return its Arrow file reader, after checking it is a whole clip file.

    Checked: the Arrow IPC file footer (a file cut short or overwritten has none), the schema at the start of
    the file against the footer's, the required columns and metadata keys, and, with `check_batches`, every
    record batch read and validated (message headers, offsets and lengths inside the file). Pixel bytes changed
    in place are not detected (no checksum; DVC's md5 of data/clips is). Raises
    ClipFileError("<path>: <what is wrong>; rerun the extract stage ...").
    """
    fix = "rerun the extract stage (dvc repro extract) to rewrite it"
    try:
        buf = pa.memory_map(str(path)).read_buffer()  # zero-copy: the whole mapped file
        reader = pa.ipc.open_file(buf)
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError) as err:  # ArrowInvalid "Not an Arrow file", a bad footer, ...
        raise ClipFileError(f"{path}: not a readable Arrow clip file ({_first_line(err)}); {fix}") from None
    schema = reader.schema
    try:  # the schema is stored twice: after the leading magic (8 bytes) and in the footer; they must agree
        leading = pa.ipc.open_stream(buf.slice(8)).schema
    except (pa.ArrowException, OSError) as err:
        raise ClipFileError(f"{path}: damaged schema at the start of the file ({_first_line(err)}); {fix}") from None
    if not leading.equals(schema, check_metadata=True):
        raise ClipFileError(f"{path}: the schema at the start of the file differs from the footer's; {fix}")
    missing = [c for c in REQUIRED_COLUMNS if c not in schema.names]
    if missing:
        raise ClipFileError(f"{path}: not a clip file: columns {schema.names} lack {missing}; {fix}")
    keys = {k.decode() for k in (schema.metadata or {})}
    if not set(META_KEYS) <= keys:
        raise ClipFileError(f"{path}: not a finished clip file: metadata lacks "
                            f"{sorted(set(META_KEYS) - keys)}; {fix}")
    if check_batches:
        for i in range(reader.num_record_batches):
            try:
                reader.get_batch(i).validate(full=True)
            except (pa.ArrowException, OSError) as err:
                raise ClipFileError(f"{path}: record batch {i} of {reader.num_record_batches} is damaged "
                                    f"({_first_line(err)}); {fix}") from None
    return reader


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


def split_files(clips_dir: Path, split: str) -> list[Path]:
    """The shard files of one split, in shard order (raises if there are none)."""
    files = sorted(Path(clips_dir).glob(f"{split}-[0-9][0-9][0-9].arrow"))
    if not files:
        raise FileNotFoundError(f"{clips_dir}: no {split}-NNN.arrow files (run the extract stage first)")
    return files


def read_meta(path: Path) -> dict:
    """The prernn.* schema metadata of a clip file, JSON-decoded (ClipFileError if the file is damaged)."""
    md = open_clip_file(path, check_batches=False).schema.metadata or {}
    try:
        return {k.decode(): json.loads(v) for k, v in md.items() if k.decode().startswith("prernn.")}
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ClipFileError(f"{path}: damaged prernn metadata ({err}); rerun the extract stage") from None

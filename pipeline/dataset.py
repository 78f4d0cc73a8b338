"""PyTorch datasets over the extract stage's Arrow clip files (memory-mapped, zero-copy).

`ClipDataset(clips_dir, split, modality, *, snippet=None)`: item i -> (float32 tensor (T, C, H, W)
[(T, C, L, H, W) with snippet L: snippet t holds frames t-L+1..t, the first frame repeated at the
start], label int), normalised as (x/255 - mean) / std with the per-channel constants of the
train split stored in the files' `prernn.normalization` metadata.
`FrameDataset`: every frame of every clip -> ((C, H, W) [or (C, L, H, W)], label).
Regression clips (a `landmarks` column, metadata `prernn.task: regression`): the target is the clip's
landmarks, float32 (T, K, 2) in [0, 1] coordinates (a frame's (K, 2) in FrameDataset), instead of the label;
`.task` is "regression" and `.num_classes` the 2K outputs of the regression head.

The files are opened lazily, once per process (a DataLoader worker re-opens them after fork), as
memory maps; `.to_numpy_ndarray()` on a fixed_shape_tensor chunk is a view of the mapped file.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import Dataset

from pipeline.clipstore import read_meta, split_files


def normalise(x: np.ndarray, mean, std, *, channels_first: bool = False) -> torch.Tensor:
    """(..., H, W, C) uint8 -> float32 tensor, (x/255 - mean) / std per channel (also used by `prernn predict`).

    Computed as x * (1 / (255 std)) - mean / std in two passes into one new array (bench.data);
    ``channels_first``: the result is laid out (..., C, H, W) (contiguous) instead.
    """
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    scale, shift = np.float32(1 / 255.0) / std, -mean / std  # (C,)
    if channels_first:
        x, scale, shift = np.moveaxis(x, -1, -3), scale[:, None, None], shift[:, None, None]
    out = np.empty(x.shape, np.float32)
    np.multiply(x, scale, out=out)
    out += shift
    return torch.from_numpy(out)


class ClipDataset(Dataset):
    """Clips of one modality from one split (or a list of splits) of a clips folder."""

    def __init__(self, clips_dir, split, modality: str, *, snippet: int | None = None):
        self.clips_dir = Path(clips_dir)
        self.splits = [split] if isinstance(split, str) else list(split)
        self.files = [f for s in self.splits for f in split_files(self.clips_dir, s)]
        self.meta = read_meta(self.files[0])
        if modality not in self.meta.get("prernn.modalities", []):
            raise ValueError(f"{self.files[0]}: modality {modality!r} not extracted; "
                             f"available: {self.meta.get('prernn.modalities')}")
        self.modality, self.snippet = modality, snippet
        if snippet is not None and snippet < 1:
            raise ValueError(f"snippet must be >= 1, got {snippet}")
        self.class_names = list(self.meta["prernn.class_names"])
        self.num_classes = len(self.class_names)
        norm = self.meta["prernn.normalization"][modality]
        self._mean = np.asarray(norm["mean"], np.float32)
        self._std = np.asarray(norm["std"], np.float32)
        self.task = self.meta.get("prernn.task", "classification")
        labels, index, points = [], [], []  # index: (file, chunk, row) per clip
        for fi, f in enumerate(self.files):
            with pa.memory_map(str(f)) as src:
                reader = pa.ipc.open_file(src)
                for b in range(reader.num_record_batches):
                    batch = reader.get_batch(b)
                    lab = batch.column("label").to_numpy()
                    labels.append(lab.copy())
                    if self.task == "regression":
                        points.append(batch.column("landmarks").to_numpy_ndarray().astype(np.float32))
                    index += [(fi, b, r) for r in range(len(lab))]
        self.labels = np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, np.int64)
        self.landmarks = (np.concatenate(points) if points else None) if self.task == "regression" else None
        self._index = index
        self._pid, self._views = None, None
        self.shape = None if not index else self._clip(0).shape  # (T, H, W, C)

    def _open(self) -> None:
        """Memory-map every file (once per process) and keep zero-copy ndarray views per batch."""
        views = []
        for f in self.files:
            reader = pa.ipc.open_file(pa.memory_map(str(f)))
            views.append([reader.get_batch(b).column(self.modality).to_numpy_ndarray()
                          for b in range(reader.num_record_batches)])
        self._views, self._pid = views, os.getpid()

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_views"], state["_pid"] = None, None  # each worker maps the files itself
        return state

    def _clip(self, i: int) -> np.ndarray:  # uint8 (T, H, W, C), a view into the mapped file
        if self._views is None or self._pid != os.getpid():
            self._open()
        fi, b, r = self._index[i]
        return self._views[fi][b][r]

    def _normalise(self, x: np.ndarray) -> torch.Tensor:  # (..., H, W, C) uint8 -> float32 same shape
        return normalise(x, self._mean, self._std)

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, i: int):
        x = normalise(self._clip(i), self._mean, self._std, channels_first=True)  # (T, C, H, W)
        if self.snippet:
            t = torch.arange(x.shape[0])
            idx = (t[:, None] - self.snippet + 1 + torch.arange(self.snippet)[None]).clamp(min=0)  # (T, L)
            x = x[idx].permute(0, 2, 1, 3, 4)  # (T, L, C, H, W) -> (T, C, L, H, W)
        return x.contiguous(), self.target(i)

    def target(self, i: int, t: int | None = None):
        """Clip i's label, or in regression its landmarks (T, K, 2) [frame t: (K, 2)] as a float32 tensor."""
        if self.landmarks is None:
            return int(self.labels[i])
        pts = self.landmarks[i] if t is None else self.landmarks[i, t]
        return torch.from_numpy(np.ascontiguousarray(pts))


class FrameDataset(Dataset):
    """Every frame of every clip of a ClipDataset: item -> ((C, H, W) [or (C, L, H, W)], label)."""

    def __init__(self, clips_dir, split, modality: str, *, snippet: int | None = None):
        self.clips = ClipDataset(clips_dir, split, modality, snippet=snippet)
        self.frames = 0 if self.clips.shape is None else self.clips.shape[0]
        self.class_names, self.num_classes = self.clips.class_names, self.clips.num_classes
        self.task = self.clips.task
        self.meta = self.clips.meta
        self.labels = np.repeat(self.clips.labels, self.frames)
        self.snippet = snippet

    def __len__(self) -> int:
        return len(self.clips) * self.frames

    def __getitem__(self, i: int):
        c, t = divmod(i, self.frames)
        raw = self.clips._clip(c)  # (T, H, W, C)
        if self.snippet:
            idx = np.clip(np.arange(t - self.snippet + 1, t + 1), 0, None)
            x = self.clips._normalise(raw[idx]).permute(3, 0, 1, 2)  # (L, H, W, C) -> (C, L, H, W)
        else:
            x = normalise(raw[t], self.clips._mean, self.clips._std, channels_first=True)  # (C, H, W)
        return x.contiguous(), self.clips.target(c, t)

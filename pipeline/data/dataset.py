"""PyTorch datasets over the extract stage's Arrow clip files (memory-mapped, zero-copy).

`ClipDataset(clips_dir, split, modality, *, snippet=None)`: item i -> (float32 tensor (T, C, H, W)
[(T, C, L, H, W) with snippet L: snippet t holds frames t-L+1..t, the first frame repeated at the
start], label int), normalised as (x/255 - mean) / std with the per-channel constants of the
train split stored in the files' `prernn.normalization` metadata.
`FrameDataset`: every frame of every clip -> ((C, H, W) [or (C, L, H, W)], label).
`raw=True` (either dataset): items stay uint8 as stored, channels last ((T, H, W, C), snippets (T, L, H, W, C),
frames (H, W, C) / (L, H, W, C)), a copy of the mapped bytes and nothing else; `dataset.normalizer()` is the
`Normalize` module that makes the float items above from them (a float item is that module applied to the raw
item), for one item or a batch, on whatever device it is on (the training loop and the trunk cache apply it
after the transfer: `device_normalizer`; `prernn predict` to the frames it decodes). This is
MMAction2's split of the work (uint8 from the loader, a data preprocessor on the device): a loader that
normalises to float32 per item spends as long on that as on reading the clip (bench.data).
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
import torch
from torch.utils.data import Dataset

from pipeline.data.clipstore import ClipFileError, open_clip_file, read_meta, split_files


class Normalize(torch.nn.Module):
    """uint8 channels-last frames -> float32 channels-first, (x/255 - mean) / std per channel, computed as
    x * (1 / (255 std)) + (-mean / std).

    (..., H, W, C) -> (..., C, H, W); with ``snippet``: (..., L, H, W, C) -> (..., C, L, H, W). A numpy array
    (a decoded frame, a mapped clip) is copied into a tensor first.
    """

    def __init__(self, mean, std, *, snippet: bool = False):
        super().__init__()
        mean, std = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)
        self.register_buffer("scale", torch.tensor(1 / 255.0, dtype=torch.float32) / std, persistent=False)  # (C,)
        self.register_buffer("shift", -mean / std, persistent=False)  # (C,)
        self.snippet = snippet

    def forward(self, x) -> torch.Tensor:
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(np.array(x))  # copied: a view of a mapped file is read-only
        n, spatial = x.dim(), 3 if self.snippet else 2  # spatial: the dims after C in the output
        order = list(range(n - spatial - 1)) + [n - 1] + list(range(n - spatial - 1, n - 1))
        xp = x.permute(order)  # (..., C, [L,] H, W) uint8, a view
        view = (-1,) + (1,) * spatial  # (C, 1, 1[, 1])
        out = torch.empty(xp.shape, dtype=torch.float32, device=x.device)  # contiguous
        torch.mul(xp, self.scale.view(view), out=out)  # two passes, as few as the arithmetic needs
        return out.add_(self.shift.view(view))


def device_normalizer(data) -> "Normalize | None":
    """The `Normalize` for `data` when it is a raw (uint8) ClipDataset / FrameDataset, else None."""
    return data.normalizer() if getattr(data, "raw", False) else None


def snippet_length(config: dict) -> int | None:
    """The snippet length L a model reads, from its config (a Backbone's `.config`, or a SequenceModel's, whose
    "backbone" it reads): a 3D backbone's `snippet` (c3d_mini's kwarg); None for a 2D backbone, which reads frames.
    The one place the pipeline works it out (the datasets of pretrain, search and evaluate, prernn predict)."""
    snippet = config.get("backbone", config).get("kwargs", {}).get("snippet")
    return None if snippet is None else int(snippet)


def snippet_index(frames: int, snippet: int) -> np.ndarray:
    """(T, L) frame indices: snippet t holds frames t-L+1..t, the first frame repeated at the start."""
    t = np.arange(frames)
    return np.clip(t[:, None] - snippet + 1 + np.arange(snippet)[None], 0, None)


class ClipDataset(Dataset):
    """Clips of one modality from one split (or a list of splits) of a clips folder."""

    def __init__(self, clips_dir, split, modality: str, *, snippet: int | None = None, raw: bool = False):
        self.clips_dir = Path(clips_dir)
        self.raw = bool(raw)
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
        self._normalize = Normalize(norm["mean"], norm["std"], snippet=bool(snippet))
        self.task = self.meta.get("prernn.task", "classification")
        labels, index, points = [], [], []  # index: (file, chunk, row) per clip
        schema = None
        for fi, f in enumerate(self.files):
            reader = open_clip_file(f)  # ClipFileError naming a damaged file, before any training
            if schema is None:
                schema = reader.schema
            elif not reader.schema.equals(schema, check_metadata=True):
                raise ClipFileError(f"{f}: not from the same extract run as {self.files[0]} (its columns or "
                                    "metadata differ); rerun the extract stage (dvc repro extract)")
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
            reader = open_clip_file(f, check_batches=False)  # checked in __init__
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

    def normalizer(self) -> Normalize:
        """The module that makes this dataset's raw items (one, or a batch) into its normalised items."""
        return self._normalize

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, i: int):
        clip = self._clip(i)  # (T, H, W, C) view
        if self.snippet:
            clip = clip[snippet_index(clip.shape[0], self.snippet)]  # (T, L, H, W, C), a new array
        x = torch.from_numpy(np.array(clip))  # the view copied: the map is read-only
        return (x if self.raw else self._normalize(x)), self.target(i)  # float: (T, C, [L,] H, W)

    def target(self, i: int, t: int | None = None):
        """Clip i's label, or in regression its landmarks (T, K, 2) [frame t: (K, 2)] as a float32 tensor."""
        if self.landmarks is None:
            return int(self.labels[i])
        pts = self.landmarks[i] if t is None else self.landmarks[i, t]
        return torch.from_numpy(np.ascontiguousarray(pts))


def phase_bin(t: int, frames: int, bins: int) -> int:
    """The phase bin of frame `t` of a clip of `frames` frames: floor(t * bins / frames), in [0, bins) (bins past
    `frames` stay empty)."""
    return (int(t) * int(bins)) // int(frames)


class FrameDataset(Dataset):
    """Every frame of every clip of a ClipDataset: item -> ((C, H, W) [or (C, L, H, W)], label).

    `phase_bins` B > 0 (classification): the target is the (class, phase) pair index label * B + phase_bin(t, T, B)
    instead of the label (pipeline.training.phase)."""

    def __init__(self, clips_dir, split, modality: str, *, snippet: int | None = None, raw: bool = False,
                 phase_bins: int = 0):
        self.clips = ClipDataset(clips_dir, split, modality, snippet=snippet, raw=raw)
        if phase_bins and self.clips.landmarks is not None:
            raise ValueError(f"{clips_dir}: phase_bins {phase_bins} asks for class targets, but the clips hold "
                             "landmarks (task regression)")
        self.phase_bins = int(phase_bins)
        self.raw = self.clips.raw
        self.normalizer = self.clips.normalizer  # the same layouts: (..., [L,] H, W, C) -> (..., C, [L,] H, W)
        self.frames = 0 if self.clips.shape is None else self.clips.shape[0]
        self.class_names, self.num_classes = self.clips.class_names, self.clips.num_classes
        self.task = self.clips.task
        self.meta = self.clips.meta
        self.labels = np.repeat(self.clips.labels, self.frames)
        self.snippet = snippet
        self._snippets = snippet_index(self.frames, snippet) if snippet else None  # (T, L)

    def __len__(self) -> int:
        return len(self.clips) * self.frames

    def __getitem__(self, i: int):
        c, t = divmod(i, self.frames)
        raw = self.clips._clip(c)  # (T, H, W, C)
        x = torch.from_numpy(np.array(raw[self._snippets[t]] if self.snippet else raw[t]))  # (L, H, W, C) / (H, W, C)
        y = self.clips.target(c, t)
        if self.phase_bins:
            y = y * self.phase_bins + phase_bin(t, self.frames, self.phase_bins)
        return (x if self.raw else self.normalizer()(x)), y  # float: (C, [L,] H, W)

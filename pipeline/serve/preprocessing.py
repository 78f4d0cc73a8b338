"""The training preprocessing, rebuilt from a final.pt's meta, for frames decoded from new videos.

`Preprocessing(meta, models)`: the extract params (`meta["extract"]`: frame size, resize mode, sampling, flow
method / preset / bound) for the model's modalities, the normalisation (`meta["normalization"]`, the dataset's
`Normalize`), each stream's snippet length (3D backbones: `pipeline.data.dataset.snippet_length`) and the depth
pattern. Decoding is the extract stage's code (`pipeline.data.video.read_clip` / `stream_frames`):
- `read_clip(video, depth_path)` -> ({modality: (T, H, W, C) uint8}, the T sampled frame indices);
- `clip_tensor(m, frames)` -> (T, C, H, W) [3D: (T, C, L, H, W)] normalised float32, as ClipDataset makes them;
- `frames(video, step)` -> {modality: (H, W, C) uint8} per streamed frame (a file or a camera index);
- `frame_tensor(m, frame)` -> (C, H, W) float32.
Errors are PredictError with the reason.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import torch

from pipeline.data.dataset import Normalize, snippet_index, snippet_length
from pipeline.data.sources import depth_partner
from pipeline.data.video import VideoError, read_clip, sample_indices, stream_capture, stream_depth, stream_frames
from pipeline.serve.errors import PredictError

DEFAULT_DEPTH_PATTERN = ("_color", "_depth")


class Preprocessing:
    """What a final.pt's streams were trained on, applied to new video (see the module docstring)."""

    def __init__(self, meta: dict, models: dict):
        self.modalities = list(models)
        self.extract = dict(meta["extract"], modalities=self.modalities)
        self.depth_pattern = tuple(meta.get("depth_pattern") or DEFAULT_DEPTH_PATTERN)
        self.snippet = {m: snippet_length(mod.config) for m, mod in models.items()}  # None: 2D backbone
        norm = meta["normalization"]
        self.norm = {m: Normalize(norm[m]["mean"], norm[m]["std"]) for m in self.modalities}  # frames
        self.norm_clip = {m: Normalize(norm[m]["mean"], norm[m]["std"], snippet=bool(self.snippet[m]))
                          for m in self.modalities}  # clips as ClipDataset makes them

    # --- inputs ---------------------------------------------------------------------------------
    def depth_for(self, video: Path) -> Path | None:
        return depth_partner(Path(video), self.depth_pattern) if not Path(video).is_dir() else None

    def check_modalities(self, video) -> Path | None:
        """The depth partner when the model needs depth; PredictError when the input cannot provide a modality."""
        if "depth" not in self.modalities:
            return None
        depth = None if isinstance(video, int) else self.depth_for(video)
        if depth is None:
            c, d = self.depth_pattern
            raise PredictError(f"the model needs modality 'depth' (modalities {self.modalities}) but this input has "
                               f"no depth video (expected x{d}.ext beside a colour video named x{c}.ext)")
        return depth

    # --- clip mode ------------------------------------------------------------------------------
    def read_clip(self, video, depth_path=None) -> tuple[dict[str, np.ndarray], list[int]]:
        """One video (+ optional explicit depth video) -> ({modality: (T, H, W, C) uint8}, the decoded indices of
        the T frames sampled as in training)."""
        depth = Path(depth_path) if depth_path and "depth" in self.modalities else self.check_modalities(video)
        info = {}
        try:
            clip = read_clip(Path(video), self.extract, depth_path=depth, info=info)
        except VideoError as err:
            raise PredictError(str(err)) from None
        idx = sample_indices(info["decoded_frames"], self.extract["frames"], self.extract["sampling"],
                             self.extract["stride"])
        return clip, [int(i) for i in idx]

    def clip_tensor(self, m: str, frames: np.ndarray) -> torch.Tensor:
        """(T, H, W, C) uint8 -> (T, C, H, W) [3D: (T, C, L, H, W)] normalised float32, as ClipDataset does."""
        L = self.snippet[m]
        if L:
            frames = frames[snippet_index(len(frames), L)]  # (T, L, H, W, C)
        return self.norm_clip[m](frames)

    # --- stream mode ----------------------------------------------------------------------------
    def default_step(self) -> int:
        """Stream every frame, or every `stride`-th for consecutive sampling (as training saw the video)."""
        return int(self.extract.get("stride", 1)) if self.extract.get("sampling") == "consecutive" else 1

    def frames(self, video, step: int) -> Iterator[dict[str, np.ndarray]]:
        """{modality: (H, W, C) uint8} per streamed frame, through pipeline.data.video's streaming helper."""
        depth_path = self.check_modalities(video)
        depth = stream_depth(depth_path, self.extract, step=step) if depth_path else None
        source = camera_frames(video, self.extract, step) if isinstance(video, int) else \
            stream_frames(Path(video), self.extract, step=step)
        try:
            for rgb, flow in source:
                out = {"rgb": rgb, "flow": flow}
                if depth is not None:
                    d = next(depth, None)
                    if d is None:
                        raise PredictError("the depth video has fewer frames than the colour video")
                    out["depth"] = d
                yield out
        except VideoError as err:
            raise PredictError(str(err)) from None

    def frame_tensor(self, m: str, frame: np.ndarray) -> torch.Tensor:
        return self.norm[m](frame)  # (H, W, C) uint8 -> (C, H, W) float32


def camera_frames(index: int, p: dict, step: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """pipeline.data.video.stream_capture over camera `index`."""
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # our one line says it
    try:
        cap = cv2.VideoCapture(index)
    finally:
        cv2.utils.logging.setLogLevel(level)
    if not cap.isOpened():
        cap.release()
        raise PredictError(f"camera {index} cannot be opened")
    yield from stream_capture(cap, p, step=step)

"""The final model ready to answer on new video: its streams, its task and the preprocessing they were trained with.

`Predictor.from_file(path)` (a final.pt: pipeline.serve.model_file) ->
- `clip_outputs(video, depth_path=None)`: T frames sampled as in training -> the fused clip outputs
  (`Task.clip_outputs` of each stream, `Task.fuse`d as evaluation fuses): (K,) class probabilities (a recurrent
  model's last step, a frame model's time average), or (T, K, 2) landmarks of the sampled frames;
- `clip_answers(video, depth_path=None)`: those as the task's answers, [(frame, answer)]: [(None, (K,))] for a
  class, [(decoded frame index, (K, 2))] per sampled frame for landmarks;
- `stream(video, step, max_frames)`: (frame index, answer for the frames so far) per streamed frame
  (pipeline.serve.stream);
- `record(video, frame, answer, k)`: the task's `prernn predict --json` record.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from pipeline.serve.errors import PredictError
from pipeline.serve.model_file import ModelFile, load_model_file
from pipeline.serve.preprocessing import Preprocessing
from pipeline.serve.stream import stream_outputs


class Predictor:
    """`models`: {modality: SequenceModel in eval mode}; `meta`: final.pt's meta; `task`: its Task; `pre`: the
    Preprocessing."""

    def __init__(self, model: ModelFile):
        self.models, self.meta, self.task, self.source = model.models, model.meta, model.task, model.source
        self.modalities = list(self.models)
        self.class_names = list(self.meta["class_names"])
        self.pre = Preprocessing(self.meta, self.models)
        self.readouts = {m: self.task.readout(mod) for m, mod in self.models.items()}

    @classmethod
    def from_file(cls, path) -> "Predictor":
        """Load a final.pt (weights_only: no pickled code runs); PredictError with the reason otherwise."""
        return cls(load_model_file(path))

    @property
    def extract(self) -> dict:
        return self.pre.extract

    @property
    def depth_pattern(self) -> tuple[str, str]:
        return self.pre.depth_pattern

    # --- clip mode ----------------------------------------------------------------------------
    def _clip(self, video, depth_path=None) -> tuple[np.ndarray, list[int]]:
        clip, frames = self.pre.read_clip(video, depth_path)
        with torch.no_grad():
            outputs = [self.task.clip_outputs(model(self.pre.clip_tensor(m, clip[m])[None]), self.readouts[m])
                       for m, model in self.models.items()]  # (1, K) or (1, T, K, 2) each
        return self.task.fuse(outputs)[0].numpy(), frames

    def clip_outputs(self, video, depth_path=None) -> np.ndarray:
        """The fused clip outputs of one video (+ optional explicit depth video): (K,) or (T, K, 2)."""
        return self._clip(video, depth_path)[0]

    def clip_answers(self, video, depth_path=None) -> list[tuple[int | None, np.ndarray]]:
        """[(frame or None, answer)] of one video in clip mode (`Task.clip_answers`)."""
        return self.task.clip_answers(*self._clip(video, depth_path))

    # --- stream mode --------------------------------------------------------------------------
    def stream(self, video, step: int | None = None, max_frames: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (frame index, the fused answer for the frames so far) for each streamed frame."""
        step = step or self.pre.default_step()
        n = 0
        for answer in stream_outputs(self.models, self.task, self.pre, self.pre.frames(video, step)):
            n += 1
            yield (n - 1) * step, answer
            if max_frames and n >= max_frames:
                break
        if n == 0:
            raise PredictError("no frames")

    # --- records ------------------------------------------------------------------------------
    def record(self, video: str, frame, answer: np.ndarray, k: int) -> dict:
        return self.task.record(video, frame, answer, self.class_names, k)

"""Stream-mode inference: one frame at a time through `SequenceModel.step`, the recurrent state carried.

`stream_outputs(models, task, pre, frames)`: for each streamed frame ({modality: (H, W, C) uint8}, from
`Preprocessing.frames`) -> the task's answer for the frames so far, fused over streams (`Task.fuse`): a stream
whose readout is "mean" (the CNN per frame) answers with the running mean of its per-step outputs, any other with
its output at this step (a recurrent model's state after the frames so far; a landmark model's landmarks of this
frame); so on a video of exactly the training frames the last answer equals clip mode's. Memory is constant: a
running mean, the recurrent state, and for 3D backbones the last L frames (the first repeated at the start, as
ClipDataset builds snippets).
"""
from __future__ import annotations

from collections import deque
from typing import Iterable, Iterator

import numpy as np
import torch

from pipeline.serve.preprocessing import Preprocessing
from pipeline.training.tasks import Task


def stream_outputs(models: dict, task: Task, pre: Preprocessing,
                   frames: Iterable[dict[str, np.ndarray]]) -> Iterator[np.ndarray]:
    """Yield the fused answer (classification (K,), landmarks (K, 2)) after each frame of `frames`."""
    states = {m: None for m in models}
    current = {m: None for m in models}  # each stream's answer for the frames so far
    windows = {m: deque(maxlen=L) for m, L in pre.snippet.items() if L}  # 3D: the last L frames
    readouts = {m: task.readout(model) for m, model in models.items()}
    n = 0
    for frame in frames:
        with torch.no_grad():  # not around the yield: grad mode must not leak into the caller
            for m, model in models.items():
                x = pre.frame_tensor(m, frame[m])  # (C, H, W)
                if m in windows:
                    w = windows[m]
                    while len(w) < w.maxlen - 1:  # the first frame repeated at the start, as in training
                        w.append(x)
                    w.append(x)
                    x = torch.stack(list(w), 1)  # (C, L, H, W)
                out, states[m] = model.step(x[None], states[m])  # (1, K)
                step = task.step_outputs(out)[0]  # (K,) probabilities, (K, 2) landmarks
                if readouts[m] == "mean":  # a frame model: the running mean of its per-frame outputs
                    current[m] = step if n == 0 else (current[m] * n + step) / (n + 1)
                else:  # its answer at this step
                    current[m] = step
            fused = task.fuse(list(current.values())).numpy()
        n += 1
        yield fused

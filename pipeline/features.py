"""The cached frozen trunk: the layers below the lowest candidate layer, run once per clip.

Every PreRNN conversion and every traditional baseline shares the stages before
`prernn.trunk_boundary(backbone)` unchanged (only the chosen layers become recurrent, [0054]), so
the search computes their output once per clip and each trial trains only the layers above.

In: a Backbone and a clip dataset (items: float32 (T, C, H, W) [3D: (T, C, L, H, W)], label; or a raw uint8
ClipDataset, normalised on `device` before the trunk).
Out: `SplitTensors(x, y, start)`: x (N, T, *F) float32 features entering stage `start`
(or the raw clips with start None when the trunk is not cached), y (N,) int64 (regression: landmarks (N, T, K, 2) float32).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from pipeline.train import batches


def _target(y) -> torch.Tensor:
    """A batch of labels -> int64 (B,); regression landmarks (B, T, K, 2) stay float32."""
    y = torch.as_tensor(y)
    return y.float() if y.is_floating_point() else y.long()


@dataclass
class SplitTensors:
    """One split held in memory: x (N, T, *F), y (N,), and the stage name x enters at (None: raw clips)."""

    x: torch.Tensor
    y: torch.Tensor
    start: Optional[str] = None

    def pair(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x, self.y

    def __len__(self) -> int:
        return len(self.y)


@torch.no_grad()
def clip_tensors(dataset, batch_size: int = 16) -> SplitTensors:
    """All clips of `dataset` as one normalised float32 tensor (N, T, ...) and their labels (N,)."""
    xs, ys = [], []
    for x, y in batches(dataset, batch_size, torch.device("cpu")):
        xs.append(x.float())
        ys.append(_target(y))
    return SplitTensors(torch.cat(xs), torch.cat(ys), None)


@torch.no_grad()
def trunk_features(backbone: torch.nn.Module, dataset, boundary: str, *, batch_size: int = 16,
                   device="cpu") -> SplitTensors:
    """Run `backbone.forward_stages(frames, stop=boundary)` on every frame of every clip.

    dataset items (T, C, H, W) -> x (N, T, *F): the features entering stage `boundary`.
    """
    device = torch.device(device)
    backbone = backbone.to(device).eval()
    xs, ys = [], []
    for clips, y in batches(dataset, batch_size, device):  # clips (B, T, C, H, W) float32 on device
        b, t = clips.shape[:2]
        frames = clips.reshape(b * t, *clips.shape[2:]).float()  # (B*T, C, H, W)
        feats = backbone.forward_stages(frames, stop=boundary)  # (B*T, *F)
        xs.append(feats.reshape(b, t, *feats.shape[1:]).cpu())  # (B, T, *F)
        ys.append(_target(y.cpu()))
    return SplitTensors(torch.cat(xs), torch.cat(ys), boundary)


def prepare_splits(backbone, datasets: dict, boundary: str, cache_trunk: bool = True, **kw) -> dict[str, SplitTensors]:
    """{split: SplitTensors} for each dataset: trunk features when `cache_trunk`, else raw clips."""
    if cache_trunk:
        return {split: trunk_features(backbone, ds, boundary, **kw) for split, ds in datasets.items()}
    return {split: clip_tensors(ds) for split, ds in datasets.items()}

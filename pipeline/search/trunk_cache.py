"""The cached frozen trunk: the layers below the lowest candidate layer, run once per clip.

Every PreRNN conversion and every traditional baseline shares the stages before
`prernn.trunk_boundary(backbone)` unchanged (only the chosen layers become recurrent, [0054]), so
the search computes their output once per clip and each trial trains only the layers above.

In: a Backbone and a clip dataset (items: float32 (T, C, H, W) [3D: (T, C, L, H, W)], label; or a raw uint8
ClipDataset, normalised on `device` before the trunk).
Out: `SplitTensors(x, y, start, normalize)`: x (N, T, *F) float32 features entering stage `start`, or with start
None (trunk not cached) the clips themselves: as stored, uint8 (N, T, H, W, C), with the dataset's `normalize`
module for the device (a quarter of the float32 memory, in RAM and in Ray's object store), or float32 from a
float dataset; y (N,) int64 (regression: landmarks (N, T, K, 2) float32).
A SplitTensors is a Dataset of (x[i], y[i]): the training loop normalises its batches on the device.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch.utils.data import DataLoader, Dataset

from pipeline.data.dataset import device_normalizer
from pipeline.training.trainer import batches


def _target(y) -> torch.Tensor:
    """A batch of labels -> int64 (B,); regression landmarks (B, T, K, 2) stay float32."""
    y = torch.as_tensor(y)
    return y.float() if y.is_floating_point() else y.long()


@dataclass
class SplitTensors(Dataset):
    """One split held in memory: x (N, T, *F), y (N,), the stage name x enters at (None: clips), and for uint8
    clips the module that normalises a batch of them (pipeline.data.dataset.Normalize)."""

    x: torch.Tensor
    y: torch.Tensor
    start: Optional[str] = None
    normalize: Optional[torch.nn.Module] = None

    @property
    def raw(self) -> bool:  # read by pipeline.data.dataset.device_normalizer
        return self.normalize is not None

    def normalizer(self) -> torch.nn.Module:
        return self.normalize

    def __getitem__(self, i):
        return self.x[i], self.y[i]

    def __len__(self) -> int:
        return len(self.y)

    def inputs(self, device="cpu") -> torch.Tensor:
        """All of x on `device`, normalised: (N, T, *F) float32 (what the model takes)."""
        x = self.x.to(device)
        return x if self.normalize is None else self.normalize.to(device)(x)


@torch.no_grad()
def clip_tensors(dataset, batch_size: int = 16) -> SplitTensors:
    """All clips of `dataset` as one tensor (N, T, ...) and their labels (N,): uint8 with the dataset's
    normaliser for a raw dataset, else float32."""
    normalize = device_normalizer(dataset)
    xs, ys = [], []
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        xs.append(x if normalize is not None else x.float())
        ys.append(_target(y))
    return SplitTensors(torch.cat(xs), torch.cat(ys), None, normalize)


@torch.no_grad()
def trunk_features(backbone: torch.nn.Module, dataset, boundary: str, *, batch_size: int = 16,
                   device="cpu", augment: Optional[torch.nn.Module] = None, copies: int = 1) -> SplitTensors:
    """Run `backbone.forward_stages(frames, stop=boundary)` on every frame of every clip.

    dataset items (T, C, H, W) -> x (N, T, *F): the features entering stage `boundary`. With `augment`
    (pipeline.data.augment.ClipAugment) the clips pass through it first, `copies` times: x (copies * N, T, *F), each
    copy an independently augmented pass (the frozen trunk then sees shifted and jittered clips, as the CNN did in
    pretraining).
    """
    device = torch.device(device)
    backbone = backbone.to(device).eval()
    xs, ys = [], []
    for _ in range(copies if augment is not None else 1):
        for clips, y in batches(dataset, batch_size, device):  # clips (B, T, C, H, W) float32 on device
            clips = clips if augment is None else augment(clips)
            b, t = clips.shape[:2]
            frames = clips.reshape(b * t, *clips.shape[2:]).float()  # (B*T, C, H, W)
            feats = backbone.forward_stages(frames, stop=boundary)  # (B*T, *F)
            xs.append(feats.reshape(b, t, *feats.shape[1:]).cpu())  # (B, T, *F)
            ys.append(_target(y.cpu()))
    return SplitTensors(torch.cat(xs), torch.cat(ys), boundary)


def prepare_splits(backbone, datasets: dict, boundary: str, cache_trunk: bool = True, *,
                   train_augment: Optional[tuple[torch.nn.Module, int]] = None, **kw) -> dict[str, SplitTensors]:
    """{split: SplitTensors} for each dataset: trunk features when `cache_trunk`, else raw clips.

    `train_augment` (augment module, copies): the "train" split's cached features are `copies` augmented passes
    (`trunk_features`); the other splits are never augmented. Without the trunk cache the Trainer augments each
    batch instead (its `augment`)."""
    if cache_trunk:
        aug, copies = train_augment or (None, 1)
        return {split: trunk_features(backbone, ds, boundary, **kw,
                                      **({"augment": aug, "copies": copies} if split == "train" else {}))
                for split, ds in datasets.items()}
    return {split: clip_tensors(ds) for split, ds in datasets.items()}

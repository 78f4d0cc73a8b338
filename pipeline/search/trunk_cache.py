"""The cached frozen trunk: the layers below a trial's lowest converted layer, run once per clip.

A trial leaves the stages before its boundary unchanged (only the chosen layers become recurrent, [0054]), so
the search computes their output once per clip and each trial trains only the layers above. A trial's boundary
(`trial_boundary`) is `prernn.trunk_boundary(backbone, layers)`: the lower of its lowest converted layer and the
backbone's default boundary (fc6 for VGG / C3D), which every traditional baseline and every conversion of default
candidates shares; trials with the same boundary share one cache (`trunk_caches`: {boundary: {split: ...}}).

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
from typing import Callable, Optional

import torch
from torch.utils.data import DataLoader, Dataset

import prernn
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
            y = _target(y)
            clips, y = (clips, y) if augment is None else augment(clips, y)  # landmarks (B, T, K, 2) move along
            b, t = clips.shape[:2]
            frames = clips.reshape(b * t, *clips.shape[2:]).float()  # (B*T, C, H, W)
            feats = backbone.forward_stages(frames, stop=boundary)  # (B*T, *F)
            xs.append(feats.reshape(b, t, *feats.shape[1:]).cpu())  # (B, T, *F)
            ys.append(y.cpu())
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


def cuts_trunk(backbone) -> bool:
    """Whether `backbone`'s trunk can be cut and cached: a prernn Backbone (named stages), not a user's module."""
    return isinstance(backbone, prernn.Backbone)


def default_boundary(backbone) -> Optional[str]:
    """`prernn.trunk_boundary(backbone)` (fc6 for VGG / C3D); None for a user's module (its trunk is not cut)."""
    return prernn.trunk_boundary(backbone) if cuts_trunk(backbone) else None


def trial_boundary(backbone, arch: dict) -> Optional[str]:
    """The stage a trial's cached inputs enter (arch: a pipeline.search.space arch dict or a selection choice): for a
    conversion `prernn.trunk_boundary(backbone, layers)`, else (traditional, no layer left) the default one; None
    for a user's module."""
    if not cuts_trunk(backbone):
        return None
    if arch.get("kind") == "prernn" and arch.get("layers"):
        return prernn.trunk_boundary(backbone, list(arch["layers"]))
    return prernn.trunk_boundary(backbone)


def space_boundaries(backbone, archs, default: bool = False) -> list[str]:
    """The distinct `trial_boundary` of `archs` (and the default boundary with `default`), in forward order (one
    trunk cache each); [] for a user's module."""
    if not cuts_trunk(backbone):
        return []
    names = list(backbone.stages)
    found = {trial_boundary(backbone, a) for a in archs} | ({default_boundary(backbone)} if default else set())
    return sorted(found, key=names.index)


def trunk_caches(backbone, datasets: dict, boundaries, cache_trunk: bool = True, *,
                 train_augment: Optional[Callable[[], Optional[tuple]]] = None, **kw) -> dict:
    """{boundary: {split: SplitTensors}}: `prepare_splits` once per boundary; without `cache_trunk`
    {None: the raw clips}, which every trial then shares. `train_augment`: () -> (augment module, copies) or None,
    called once per boundary, so that every cache is made from the same augmented clips. A user's module: the raw
    clips, whatever `cache_trunk` says (its trunk is not cut)."""
    if not cache_trunk or not cuts_trunk(backbone):
        return {None: prepare_splits(backbone, datasets, None, cache_trunk=False)}
    return {b: prepare_splits(backbone, datasets, b, train_augment=train_augment() if train_augment else None, **kw)
            for b in boundaries}


def trial_splits(caches: dict, backbone, arch: dict) -> dict:
    """The {split: SplitTensors} a trial trains on: the raw clips when the trunk is not cached, else the cache at
    its `trial_boundary` (KeyError naming the boundaries there are when it is missing)."""
    if None in caches:
        return caches[None]
    boundary = trial_boundary(backbone, arch)
    if boundary not in caches:
        raise KeyError(f"no trunk cache at {boundary!r} for {arch.get('name', arch.get('layers'))!r}; "
                       f"cached: {sorted(caches)}")
    return caches[boundary]

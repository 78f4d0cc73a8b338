"""Tiny data for the search-side tests: Arrow clip files in the contract schema and a small backbone."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.data.clipstore import ClipWriter

CLASSES = ["a", "b", "c"]


def toy_clip(label: int, rng: np.random.Generator, frames: int = 4, size: int = 16) -> np.ndarray:
    """uint8 (T, H, W, 3): a bright square in the quadrant of `label`, moving a little, on noise."""
    clip = rng.integers(0, 60, size=(frames, size, size, 3), dtype=np.uint8)
    half = size // 2
    r0, c0 = [(0, 0), (0, half), (half, 0), (half, half)][label % 4]
    for t in range(frames):
        s = t % 2
        clip[t, r0 + s:r0 + half - 2 + s, c0:c0 + half - 2, label % 3] = 250
    return clip


def make_clips(out_dir: Path, per_split=None, frames: int = 4, size: int = 16, seed: int = 0,
               classes=CLASSES) -> Path:
    """Write train/val/test Arrow files of toy rgb clips; returns the folder."""
    per_split = per_split or {"train": 4, "val": 2, "test": 2}  # clips per class
    rng = np.random.default_rng(seed)
    writer = ClipWriter(Path(out_dir), ["rgb"], frames, size, shard_bytes=1 << 30)
    for split, n in per_split.items():
        for k in range(len(classes)):
            for i in range(n):
                writer.add(split, {"rgb": toy_clip(k, rng, frames, size)}, k, f"{split}-{k}-{i}", f"v/{split}-{k}-{i}.avi")
    meta = {"prernn.class_names": list(classes), "prernn.extract": {"frames": frames, "size": size},
            "prernn.normalization": {"rgb": {"mean": [0.2] * 3, "std": [0.3] * 3}}, "prernn.modalities": ["rgb"]}
    writer.finish(meta)
    return Path(out_dir)


def toy_tensors(n_per_class: int = 6, classes: int = 3, frames: int = 4, size: int = 16, seed: int = 0,
                raw: bool = False):
    """(x float32 (N, T, 3, H, W) normalised, y int64 (N,)) of toy clips; raw: x as stored, uint8 (N, T, H, W, 3)
    (normalised by pipeline.data.dataset.Normalize(TOY_MEAN, TOY_STD))."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for k in range(classes):
        for _ in range(n_per_class):
            xs.append(toy_clip(k, rng, frames, size))
            ys.append(k)
    if raw:
        return torch.from_numpy(np.stack(xs)), torch.tensor(ys)
    x = torch.from_numpy(np.stack(xs)).float().div(255).sub(0.2).div(0.3).permute(0, 1, 4, 2, 3).contiguous()
    return x, torch.tensor(ys)


TOY_MEAN, TOY_STD = [0.2] * 3, [0.3] * 3


def pretrained_search_project(root: Path, search: dict, experiment: str, per_split=None) -> Path:
    """A tiny rgb project under `root` ready for the search stage: Arrow clips (`per_split`: clips per class and
    split, default 3 train and 2 val; add "test" for the evaluate stage), params.yaml (rgb, 16 px, T=4, gru cells,
    `search` overrides on top) and a 1-epoch pretrained vgg_mini; returns `root`."""
    import yaml

    from stages import pretrain

    make_clips(root / "clips", per_split=per_split or {"train": 3, "val": 2})
    params = {
        "extract": {"modalities": ["rgb"], "size": 16, "frames": 4},
        "pretrain": {"modalities": ["rgb"], "epochs": 1, "batch_size": 16},
        "search": {"modality": "rgb", "cells": ["gru"], "sih": [False], "baselines": [1], "batch_size": 4,
                   "storage_path": str(root / "ray"), **search},
        "evaluate": {"modalities": ["rgb"]},
        "mlflow": {"tracking_uri": f"sqlite:///{root}/mlflow.db", "experiment": experiment},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    pretrain.main(["--params", str(root / "params.yaml"), "--clips", str(root / "clips"),
                   "--out", str(root / "pretrained")])
    return root


def search_args(root: Path, params: str = "params.yaml", out: str = "search") -> list[str]:
    """The search stage's command-line arguments for a `pretrained_search_project`."""
    return ["--params", str(root / params), "--clips", str(root / "clips"), "--pretrained",
            str(root / "pretrained"), "--out", str(root / out), "--quiet"]

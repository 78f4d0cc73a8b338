"""Training-time augmentation on the device, after normalisation: the same random change for every frame of a clip.

`ClipAugment(shift, jitter)`: x (N, C, H, W) frames or (B, T, C, H, W) clips, float32, normalised -> the same
shape: each sample (each clip: all its frames alike, so motion is kept) shifted by up to `shift` pixels in x and
y (edges replicated) and its values scaled by 1 + U(-jitter, jitter) and offset by U(-jitter, jitter) (contrast
and brightness in normalised units). No flips: a horizontal flip would turn swipe_left into swipe_right.
The pretrain stage uses it on frames (`pretrain.augment`), the search on clips before the trunk cache
(`search.augment_copies` augmented copies of the train split).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def from_params(section, seed: int = 0, *, augments: bool = True) -> "ClipAugment | None":
    """The augmentation a params section asks for (`augment_shift`, `augment_jitter`), or None when both are 0 or
    the task does not augment (`augments`: pipeline.training.tasks.Task.augments; a shifted frame would no longer
    match its landmark coordinates)."""
    shift, jitter = int(section.augment_shift), float(section.augment_jitter)
    if not augments or (not shift and not jitter):
        return None
    return ClipAugment(shift, jitter, torch.Generator().manual_seed(int(seed)))


class ClipAugment(nn.Module):
    def __init__(self, shift: int = 2, jitter: float = 0.2, generator: torch.Generator | None = None):
        super().__init__()
        if shift < 0 or jitter < 0:
            raise ValueError(f"augment: shift {shift!r} and jitter {jitter!r} must be >= 0")
        self.shift, self.jitter, self.generator = int(shift), float(jitter), generator

    def _rand(self, *shape, device) -> torch.Tensor:
        return torch.rand(*shape, generator=self.generator).to(device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        clips = x.dim() == 5
        b = x.shape[0]
        frames = x if not clips else x.flatten(0, 1)  # (N, C, H, W)
        per = x.shape[1] if clips else 1  # frames per sample
        out = frames
        if self.shift:
            s = self.shift
            h, w = frames.shape[-2:]
            padded = F.pad(frames, (s, s, s, s), mode="replicate")  # (N, C, H+2s, W+2s)
            offsets = (self._rand(b, 2, device="cpu") * (2 * s + 1)).long().clamp_(max=2 * s)  # (B, 2)
            offsets = offsets.repeat_interleave(per, 0)  # every frame of a clip alike
            rows = torch.arange(h)[None] + offsets[:, :1]  # (N, H)
            cols = torch.arange(w)[None] + offsets[:, 1:]  # (N, W)
            idx_r = rows.to(x.device)[:, None, :, None].expand(-1, frames.shape[1], -1, padded.shape[-1])
            out = padded.gather(2, idx_r)  # (N, C, H, W+2s)
            idx_c = cols.to(x.device)[:, None, None, :].expand(-1, frames.shape[1], h, -1)
            out = out.gather(3, idx_c)  # (N, C, H, W)
        if self.jitter:
            scale = 1 + (self._rand(b, device=x.device) * 2 - 1) * self.jitter  # (B,)
            offset = (self._rand(b, device=x.device) * 2 - 1) * self.jitter
            scale, offset = scale.repeat_interleave(per), offset.repeat_interleave(per)
            out = out * scale[:, None, None, None] + offset[:, None, None, None]
        return out.reshape(x.shape)

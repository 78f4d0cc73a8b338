"""Training-time augmentation on the device, after normalisation: the same random change for every frame of a clip.

`ClipAugment(shift, jitter, points=False)`: x (N, C, H, W) frames or (B, T, C, H, W) clips, float32, normalised ->
the same shape: each sample (each clip: all its frames alike, so motion is kept) shifted by up to `shift` pixels in
x and y (edges replicated) and its values scaled by 1 + U(-jitter, jitter) and offset by U(-jitter, jitter)
(contrast and brightness in normalised units). No flips: a horizontal flip would turn swipe_left into swipe_right.
`augment(x, y)` returns (x, y): labels pass through; with `points` (landmark regression) y (N, ..., 2) holds
(x, y) coordinates in [0, 1] of the frame and moves with it, by the sample's shift / the frame's width and height.
The pretrain stage uses it on frames (`pretrain.augment`), the search on clips before the trunk cache
(`search.augment_copies` augmented copies of the train split).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def from_params(section, seed: int = 0, *, points: bool = False) -> "ClipAugment | None":
    """The augmentation a params section asks for (`augment_shift`, `augment_jitter`), or None when both are 0.
    `points`: the targets are landmark coordinates that move with the frame (pipeline.training.tasks.Task.points)."""
    shift, jitter = int(section.augment_shift), float(section.augment_jitter)
    if not shift and not jitter:
        return None
    return ClipAugment(shift, jitter, torch.Generator().manual_seed(int(seed)), points=points)


class ClipAugment(nn.Module):
    def __init__(self, shift: int = 2, jitter: float = 0.2, generator: torch.Generator | None = None, *,
                 points: bool = False):
        super().__init__()
        if shift < 0 or jitter < 0:
            raise ValueError(f"augment: shift {shift!r} and jitter {jitter!r} must be >= 0")
        self.shift, self.jitter, self.generator, self.points = int(shift), float(jitter), generator, bool(points)

    def _rand(self, *shape, device) -> torch.Tensor:
        return torch.rand(*shape, generator=self.generator).to(device)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None):
        """x -> augmented x; with y: (augmented x, y), landmark points y (B, ..., 2) moved with their sample."""
        clips = x.dim() == 5
        b = x.shape[0]
        frames = x if not clips else x.flatten(0, 1)  # (N, C, H, W)
        per = x.shape[1] if clips else 1  # frames per sample
        out = frames
        shifts = None  # (B, 2) pixels (down, right) the content moved
        if self.shift:
            s = self.shift
            h, w = frames.shape[-2:]
            padded = F.pad(frames, (s, s, s, s), mode="replicate")  # (N, C, H+2s, W+2s)
            sample_offsets = (self._rand(b, 2, device="cpu") * (2 * s + 1)).long().clamp_(max=2 * s)  # (B, 2)
            shifts = s - sample_offsets  # out[i] = frame[i + offset - s]: content at p lands at p + s - offset
            offsets = sample_offsets.repeat_interleave(per, 0)  # every frame of a clip alike
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
        out = out.reshape(x.shape)
        if y is None:
            return out
        if self.points and shifts is not None:
            h, w = frames.shape[-2:]
            move = (shifts.flip(1).to(y.device, y.dtype) / torch.tensor([w, h], device=y.device, dtype=y.dtype))
            y = y + move.reshape(b, *([1] * (y.dim() - 2)), 2)  # (B, ..., 2) + (B, 1.., 2): (x, y) coordinates
        return out, y

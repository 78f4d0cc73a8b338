"""Pretraining's second target: the frame's class together with where in its clip the frame lies.

A frame of a time-reversed pair of classes (swipe_left / swipe_right) cannot tell its class: its label alone asks
the CNN for little, and what the CNN learns from it (or does not) decides what the recurrent layers inherit
(README "Training recipe"). Its (class, phase) can be told: an object on the left early in a slide-right clip is
the same frame late in a slide-left one, and either answer is right. So pretraining also trains a linear head on
the feature layer (fc7) for the K * B pairs (class k, phase bin b) of the clip's T frames, b = floor(t * B / T)
(`pipeline.data.dataset.phase_bin`), and takes `weight` times its cross-entropy beside the class loss. The head is dropped afterwards:
the stored CNN is the backbone, its classifier trained on the class alone.

- `PhaseHead(backbone, bins)`: x (N, C, H, W) -> logits (N, K + K * B): the backbone's K, then the K * B pairs'.
- `PhaseClassification(bins, weight)`: the pretrain stage's task for it; targets are pair indices k * B + b
  (`pipeline.data.dataset.FrameDataset(phase_bins=B)`), outputs and accuracy those of the class logits alone.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.training.tasks import Classification


class PhaseHead(nn.Module):
    """A Backbone with the (class, phase) head on its feature layer's output; `backbone` is the CNN to keep."""

    def __init__(self, backbone, bins: int):
        super().__init__()
        if bins < 1:
            raise ValueError(f"phase bins {bins!r}: expected >= 1")
        self.backbone, self.bins = backbone, int(bins)
        names = list(backbone.stages)
        self._head_stage = names[names.index(backbone.feature_layer) + 1]  # the classifier after fc7
        self.phase = nn.Linear(backbone.feature_dim, backbone.num_classes * self.bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) [3D: (N, C, L, H, W)] -> (N, K + K * B)."""
        h = self.backbone.forward_stages(x, stop=self._head_stage)  # (N, feature_dim)
        return torch.cat([self.backbone.forward_stages(h, start=self._head_stage), self.phase(h)], dim=1)


class PhaseClassification(Classification):
    """Classification of frames whose targets are (class, phase) pair indices y = k * B + b (not registered: the
    pretrain stage makes it from `pretrain.phase_bins` and `pretrain.phase_weight`)."""

    def __init__(self, bins: int, weight: float, num_classes: int):
        super().__init__()
        self.bins, self.weight, self.num_classes = int(bins), float(weight), int(num_classes)

    def loss(self, out, y, readout):
        """out (N, K + K * B), y (N,) pair indices -> (CE(class) + weight * CE(pair), class probabilities (N, K))."""
        k = self.num_classes
        cls, pair = out[:, :k], out[:, k:]  # (N, K), (N, K * B)
        loss = F.cross_entropy(cls, y // self.bins) + self.weight * F.cross_entropy(pair, y)
        return loss, cls.softmax(-1).detach()

    def train_metric_sum(self, outputs, y):
        return super().train_metric_sum(outputs, y // self.bins)

    def metrics(self, outputs, targets):
        return super().metrics(outputs, targets // self.bins)

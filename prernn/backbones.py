"""Trained-CNN architectures as ordered sequences of named stages (so any stage can run per frame).

Every backbone is a ``Backbone`` whose ``.stages`` is an ordered ``nn.ModuleDict``; a stage maps
(N, ...) -> (N, ...). Parameter names follow torchvision where feasible so that torchvision
VGG16 / ResNet-18 state_dicts can be mapped (see ``prernn.pretrained``).

- ``vgg16``: the real VGG16 (224x224 input). Each conv block is two stages: ``conv{b}`` (its convs but the last)
  and the block's last conv layer ``conv1_2``, ``conv2_2``, ``conv3_3``, ``conv4_3``, ``conv5_3`` (conv, ReLU, the
  block's max pool; conv5_3 also the 7x7 adaptive avgpool); then fc6 (25088->4096, ReLU, dropout), fc7
  (4096->4096, ReLU, dropout), classifier.
- ``vgg_mini``: same shape, one conv per block (``conv1``..``conv3``, 16-32-64 channels with batch norm), fc6/fc7
  width 128; for 16-112 px frames.
- ``resnet18``: the real ResNet-18; every stage's last residual block is a stage of its own (``layer1_1`` ..
  ``layer4_1``, after ``layer1`` .. ``layer4`` holding block 0); ``layer4_1`` feeds global average pooling.
- ``resnet_mini``: channels 16-32-64, blocks 1-1-2: ``layer1``, ``layer2`` (one block each), ``layer3`` (block 0),
  ``layer3_1`` (feeds global average pooling).
- ``c3d_mini``: a small 3D CNN over snippets (N, C, L, H, W): conv1..conv3 (3D conv, BN, ReLU, pool), fc6/fc7.

Candidates (``Backbone.candidates``, the layers ``prernn.convert`` can make recurrent, forward order): the last conv
layer of every VGG block and fc6, fc7 (FIG. 1B, [0036]: conv layers 125; [0044] Eq. 4-6); c3d_mini's last 3D conv,
fc6, fc7; every ResNet stage's last residual block ([0043], FIG. 1D/1E). ``default_candidates`` are the patent's
Table 1 embodiment ([0067]: fc6, fc7 of VGG/C3D) and, for a ResNet, the last block that feeds the pooling: the
layers the search combines unless ``search.layers`` names others.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_backbone


class FCStage(nn.Module):
    """A fully connected stage y = H(W_xy x + b) (Eq. 4), then dropout. (N, *F) -> (N, out)."""

    def __init__(self, in_features: int, out_features: int, activation: str | None = "relu", dropout: float = 0.0):
        super().__init__()
        if activation not in (None, "relu", "tanh"):
            raise ValueError(f"activation must be None, 'relu' or 'tanh', got {activation!r}")
        self.linear = nn.Linear(in_features, out_features)
        self.activation = activation
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x.flatten(1))  # (N, out)
        if self.activation == "relu":
            y = F.relu(y)
        elif self.activation == "tanh":
            y = torch.tanh(y)
        return self.dropout(y)


class BasicBlock(nn.Module):
    """ResNet basic block (torchvision names): relu(bn2(conv2(relu(bn1(conv1(x))))) + downsample(x))."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + identity)


class Stem(nn.Module):
    """ResNet stem (torchvision names conv1, bn1, maxpool)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, maxpool: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1) if maxpool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))


class GlobalPool(nn.Module):
    """Global average pooling: (N, C, *S) -> (N, C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).mean(2)


class Backbone(nn.Module):
    """A trained CNN as ordered named stages.

    Attributes: ``stages`` (nn.ModuleDict, forward order), ``config`` (JSON-able
    ``{"name", "num_classes", "in_channels", "kwargs"}``), ``is_3d``, ``candidates`` (stages that can be made
    recurrent, forward order), ``default_candidates`` (the subset the search combines by default), ``absorbs``
    ({conv candidate: the pooling stage it absorbs}), ``feature_layer`` (last feature stage, input of the
    classifier), ``feature_dim``, ``torchvision_prefixes`` ([(tv, ours)]).
    """

    def __init__(self, stages, *, config, is_3d, candidates, feature_layer, feature_dim,
                 default_candidates=None, absorbs=None, torchvision_prefixes=None):
        super().__init__()
        self.stages = nn.ModuleDict(stages)
        self.config = config
        self.is_3d = bool(is_3d)
        names = list(self.stages)
        unknown = [c for c in list(candidates) + list(default_candidates or []) if c not in self.stages]
        if unknown:
            raise ValueError(f"candidates {unknown} are not stages; expected names from {names}")
        self.candidates = sorted(candidates, key=names.index)
        self.default_candidates = sorted(default_candidates or candidates, key=names.index)
        if not set(self.default_candidates) <= set(self.candidates):
            raise ValueError(f"default candidates {self.default_candidates} not all in candidates {self.candidates}")
        self.absorbs = dict(absorbs or {})
        self.feature_layer = feature_layer
        self.feature_dim = int(feature_dim)
        self.torchvision_prefixes = list(torchvision_prefixes or [])

    @property
    def num_classes(self) -> int:
        return int(self.config["num_classes"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) [3D: (N, C, L, H, W)] -> (N, K)."""
        return self.forward_stages(x)

    def forward_stages(self, x: torch.Tensor, start: str | None = None, stop: str | None = None) -> torch.Tensor:
        """Run stages from ``start`` (inclusive) up to ``stop`` (exclusive); None = first / past the last."""
        names = list(self.stages)
        for s in (start, stop):
            if s is not None and s not in self.stages:
                raise ValueError(f"unknown stage {s!r}; expected one of {names}")
        i0 = names.index(start) if start is not None else 0
        i1 = names.index(stop) if stop is not None else len(names)
        for name in names[i0:i1]:
            x = self.stages[name](x)
        return x


def _config(name, num_classes, in_channels, kwargs):
    return {"name": name, "num_classes": int(num_classes), "in_channels": int(in_channels), "kwargs": dict(kwargs)}


def _vgg_layers(cin, widths, bn):
    """[(conv, (bn), relu) per width], channels out."""
    layers = []
    for w in widths:
        layers.append(nn.Conv2d(cin, w, 3, padding=1))
        if bn:
            layers.append(nn.BatchNorm2d(w))
        layers.append(nn.ReLU(inplace=True))
        cin = w
    return layers, cin


def _vgg(name, num_classes, in_channels, blocks, fc_width, pool, bn, dropout, kwargs) -> Backbone:
    """Per block b: stage ``conv{b}`` (its convs but the last; absent for a one-conv block) and the block's last
    conv layer as its own stage (``conv{b}_{k}``, or ``conv{b}`` for a one-conv block) with the block's pools."""
    stages, tv, idx, c, convs = [], [], 0, in_channels, []
    for b, widths in enumerate(blocks, 1):
        last = f"conv{b}" if len(widths) == 1 else f"conv{b}_{len(widths)}"
        parts = []
        if len(widths) > 1:
            lower, c = _vgg_layers(c, widths[:-1], bn)
            parts.append((f"conv{b}", lower))
        top, c = _vgg_layers(c, widths[-1:], bn)
        parts.append((last, top + [nn.MaxPool2d(2)]))
        for stage, layers in parts:
            for j in range(len(layers)):  # torchvision features.N <-> stages.<stage>.{j}
                tv.append((f"features.{idx + j}.", f"stages.{stage}.{j}."))
            idx += len(layers)
        if b == len(blocks):
            parts[-1][1].append(nn.AdaptiveAvgPool2d(pool))  # torchvision's model.avgpool (no parameters)
        stages += [(stage, nn.Sequential(*layers)) for stage, layers in parts]
        convs.append(last)
    stages.append(("fc6", FCStage(c * pool * pool, fc_width, "relu", dropout)))
    stages.append(("fc7", FCStage(fc_width, fc_width, "relu", dropout)))
    stages.append(("classifier", FCStage(fc_width, num_classes, None, 0.0)))
    tv += [("classifier.0.", "stages.fc6.linear."), ("classifier.3.", "stages.fc7.linear."),
           ("classifier.6.", "stages.classifier.linear.")]
    return Backbone(stages, config=_config(name, num_classes, in_channels, kwargs), is_3d=False,
                    candidates=convs + ["fc6", "fc7"], default_candidates=["fc6", "fc7"], feature_layer="fc7",
                    feature_dim=fc_width, torchvision_prefixes=tv)


@register_backbone
def vgg16(num_classes: int, in_channels: int = 3, *, dropout: float = 0.5) -> Backbone:
    """The real VGG16 layout (224x224 input), fc6 25088->4096, fc7 4096->4096, classifier 4096->K."""
    blocks = [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]]
    return _vgg("vgg16", num_classes, in_channels, blocks, 4096, 7, False, dropout, {"dropout": dropout})


@register_backbone
def vgg_mini(num_classes: int, in_channels: int = 3, *, input_size: int = 32, width: int = 128,
             dropout: float = 0.5) -> Backbone:
    """VGG-shaped small net: conv blocks 16-32-64 (+BN), adaptive avgpool to min(4, input_size//8), fc6/fc7 ``width``."""
    if not 16 <= int(input_size) <= 112:
        raise ValueError(f"vgg_mini input_size must be in [16, 112], got {input_size!r}")
    pool = max(1, min(4, int(input_size) // 8))
    kwargs = {"input_size": int(input_size), "width": int(width), "dropout": dropout}
    return _vgg("vgg_mini", num_classes, in_channels, [[16], [32], [64]], int(width), pool, True, dropout, kwargs)


def _resnet(name, num_classes, in_channels, widths, blocks, stem, kwargs) -> Backbone:
    """Per stage li of n blocks: ``layer{li}`` (blocks 0..n-2) and its last block ``layer{li}_{n-1}`` as a stage of
    its own; a one-block stage is ``layer{li}`` alone. Every stage's last block is a candidate."""
    stages = [("stem", Stem(in_channels, widths[0], *stem))]
    tv = [("conv1.", "stages.stem.conv1."), ("bn1.", "stages.stem.bn1.")]
    c, lasts = widths[0], []
    for li, (w, n) in enumerate(zip(widths, blocks), 1):
        layer = [BasicBlock(c if j == 0 else w, w, 2 if (j == 0 and li > 1) else 1) for j in range(n)]
        c = w
        if n == 1:
            stages.append((f"layer{li}", nn.Sequential(*layer)))
            tv.append((f"layer{li}.", f"stages.layer{li}."))
            lasts.append(f"layer{li}")
            continue
        stages.append((f"layer{li}", nn.Sequential(*layer[:-1])))
        tv += [(f"layer{li}.{j}.", f"stages.layer{li}.{j}.") for j in range(n - 1)]
        last = f"layer{li}_{n - 1}"
        stages.append((last, layer[-1]))
        tv.append((f"layer{li}.{n - 1}.", f"stages.{last}."))
        lasts.append(last)
    stages.append(("pool", GlobalPool()))
    stages.append(("classifier", FCStage(c, num_classes, None, 0.0)))
    tv.append(("fc.", "stages.classifier.linear."))
    return Backbone(stages, config=_config(name, num_classes, in_channels, kwargs), is_3d=False,
                    candidates=lasts, default_candidates=lasts[-1:], absorbs={lasts[-1]: "pool"},
                    feature_layer="pool", feature_dim=c, torchvision_prefixes=tv)


@register_backbone
def resnet18(num_classes: int, in_channels: int = 3) -> Backbone:
    """The real ResNet-18 layout; stages stem, layer1, layer1_1, .., layer4, layer4_1 (block 0 and the last block of
    each stage), pool, classifier."""
    return _resnet("resnet18", num_classes, in_channels, [64, 128, 256, 512], [2, 2, 2, 2], (7, 2, True), {})


@register_backbone
def resnet_mini(num_classes: int, in_channels: int = 3) -> Backbone:
    """Small ResNet (16-32-64, blocks 1-1-2, 3x3 stem, no maxpool): stem, layer1, layer2, layer3, layer3_1 (the last
    block, feeds pooling), pool, classifier."""
    return _resnet("resnet_mini", num_classes, in_channels, [16, 32, 64], [1, 1, 2], (3, 1, False), {})


@register_backbone
def c3d_mini(num_classes: int, in_channels: int = 3, *, snippet: int = 4, width: int = 128,
             dropout: float = 0.5) -> Backbone:
    """Small C3D: 3D conv blocks 16-32-64 (+BN) over snippets (N, C, L, H, W), fc6/fc7 ``width``."""
    if int(snippet) < 1:
        raise ValueError(f"c3d_mini snippet must be >= 1, got {snippet!r}")
    stages, c = [], in_channels
    for b, (w, pool) in enumerate([(16, (1, 2, 2)), (32, (2, 2, 2)), (64, (2, 2, 2))], 1):
        layers = [nn.Conv3d(c, w, 3, padding=1), nn.BatchNorm3d(w), nn.ReLU(inplace=True),
                  nn.MaxPool3d(pool, ceil_mode=True)]
        if b == 3:
            layers.append(nn.AdaptiveAvgPool3d((1, 2, 2)))
        stages.append((f"conv{b}", nn.Sequential(*layers)))
        c = w
    stages.append(("fc6", FCStage(c * 4, width, "relu", dropout)))
    stages.append(("fc7", FCStage(width, width, "relu", dropout)))
    stages.append(("classifier", FCStage(width, num_classes, None, 0.0)))
    kwargs = {"snippet": int(snippet), "width": int(width), "dropout": dropout}
    # the snippet length lives in the config's kwargs only (pipeline.data.dataset.snippet_length reads it there)
    return Backbone(stages, config=_config("c3d_mini", num_classes, in_channels, kwargs), is_3d=True,
                    candidates=["conv3", "fc6", "fc7"], default_candidates=["fc6", "fc7"], feature_layer="fc7",
                    feature_dim=width)

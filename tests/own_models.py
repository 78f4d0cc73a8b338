"""Trained networks the project never saw, for the tests of prernn.generic and of the pipeline with
`pretrain.backbone: tests.own_models:<builder>` (tests/test_own_model_pipeline.py).

`ONet`: MTCNN's output network (facenet-pytorch's layer list; its trained weights are that package's
data/onet.pt), three heads; `onet_landmarks` builds it with the landmark head only (a subclass: the layer names
and the state dict's keys stay ONet's, so data/onet.pt loads strictly). `TinyResNet`: a ResNet-shaped net with
torchvision's naming (features, layer1.0, layer4.1, avgpool, fc); `tiny_resnet` builds it for the pipeline.
"""
import importlib.util
import os

import torch
from torch import nn


def data_file(package: str, relative: str) -> str | None:
    """A data file shipped inside `package` (facenet-pytorch's data/onet.pt), found without importing it (the
    test-only packages pin an old torch); None when not installed."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], relative)
    return path if os.path.exists(path) else None


class ONet(nn.Module):
    """MTCNN's output network, layer for layer as facenet-pytorch 2.6.0's models/mtcnn.py ONet (without its
    weight loading): (N, 3, 48, 48) -> (boxes (N, 4), landmarks (N, 10), face probabilities (N, 2))."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.softmax6_1 = nn.Softmax(dim=1)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = x.permute(0, 3, 2, 1).contiguous()
        x = self.prelu5(self.dense5(x.view(x.shape[0], -1)))
        return self.dense6_2(x), self.dense6_3(x), self.softmax6_1(self.dense6_1(x))


class Block(nn.Module):
    """torchvision's BasicBlock, written again."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + identity)


class Bottleneck(Block):
    """A block with a third conv: not a BasicBlock, refused."""

    def __init__(self, c):
        super().__init__(c, c)
        self.conv3 = nn.Conv2d(c, c, 1, bias=False)

    def forward(self, x):
        return self.conv3(super().forward(x))


class TinyResNet(nn.Module):
    def __init__(self, num_classes=5, width=8):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                      nn.MaxPool2d(2))
        self.layer1 = nn.Sequential(Block(width, width), Bottleneck(width))
        self.layer4 = nn.Sequential(Block(width, 2 * width, 2), Block(2 * width, 2 * width))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = self.layer4(self.layer1(self.features(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class ONetLandmarks(ONet):
    """ONet answering with its landmark head only: (N, 3, 48, 48) -> (N, 10), five (x, y) in [0, 1] of the crop."""

    def forward(self, x):
        return super().forward(x)[1]


def onet_landmarks() -> ONetLandmarks:
    """The builder `tests.own_models:onet_landmarks` (untrained; `pretrain.weights`: data/onet.pt)."""
    return ONetLandmarks()


def tiny_resnet(num_classes: int = 5, width: int = 8) -> TinyResNet:
    """The builder `tests.own_models:tiny_resnet` (random weights; the pipeline pretrains it)."""
    return TinyResNet(num_classes, width)


def onet() -> ONet:
    """The builder `tests.own_models:onet`: ONet with its three heads (the pipeline refuses a tuple output)."""
    return ONet()

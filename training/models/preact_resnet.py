"""PreAct ResNet-18 (He et al. 2016, "Identity Mappings in Deep Residual Networks").

The standard architecture of the fast adversarial training literature (Wong et al. 2020,
Rice et al. 2020). ``width`` scales every stage's channels: 1.0 is the usual 11M-parameter
network for GPUs, 0.5 and 0.25 train on a small CPU.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from training.models.base import ImageClassifier, residual_stages


class PreActBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(ImageClassifier):
    def __init__(
        self,
        num_blocks: Sequence[int] = (2, 2, 2, 2),
        num_classes: int = 10,
        width: float = 1.0,
        mean: Sequence[float] = (0.0, 0.0, 0.0),
        std: Sequence[float] = (1.0, 1.0, 1.0),
    ) -> None:
        super().__init__(mean, std)
        if width <= 0:
            raise ValueError(f"width must be > 0, got {width}")
        channels = [max(8, int(round(c * width))) for c in (64, 128, 256, 512)]
        self.conv1 = nn.Conv2d(3, channels[0], 3, 1, 1, bias=False)
        self.layers, in_planes = residual_stages(PreActBlock, channels[0], list(zip(channels, num_blocks)))
        self.bn = nn.BatchNorm2d(in_planes)
        self.feature_dim = in_planes
        self.fc = nn.Linear(in_planes, num_classes)

    def _backbone(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(self.conv1(x))
        out = F.relu(self.bn(out))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

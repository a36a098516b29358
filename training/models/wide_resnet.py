"""WideResNet (Zagoruyko and Komodakis 2016), as used by Madry et al. 2018 and TRADES.

WRN-34-10 is the TRADES / AutoAttack-leaderboard reference; WRN-28-10 the lighter one.
Both are GPU models (36M and 46M parameters).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from training.models.base import ImageClassifier, residual_stages
from training.models.preact_resnet import PreActBlock


class WideBlock(PreActBlock):
    """A pre-activation block with dropout between its two convolutions (Zagoruyko and
    Komodakis 2016); without dropout it is ``PreActBlock`` (same parameters and names)."""

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float) -> None:
        super().__init__(in_planes, planes, stride)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = F.relu(self.bn2(self.conv1(out)))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        return self.conv2(out) + shortcut


class WideResNet(ImageClassifier):
    def __init__(
        self,
        depth: int = 28,
        widen_factor: int = 10,
        num_classes: int = 10,
        dropout: float = 0.0,
        mean: Sequence[float] = (0.0, 0.0, 0.0),
        std: Sequence[float] = (1.0, 1.0, 1.0),
    ) -> None:
        super().__init__(mean, std)
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n+4 (e.g. 28, 34), got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.layers, in_planes = residual_stages(lambda i, o, s: WideBlock(i, o, s, dropout), widths[0],
                                                 [(planes, n) for planes in widths[1:]])
        self.bn = nn.BatchNorm2d(in_planes)
        self.feature_dim = in_planes
        self.fc = nn.Linear(in_planes, num_classes)

    def _backbone(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.layers(self.conv1(x))))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

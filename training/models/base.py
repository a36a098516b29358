"""Base class for every classifier: normalisation is the first layer.

Following RobustBench, mean/std are registered buffers and applied in ``forward``, so
attacks, evaluation, serving and the demo all work on raw [0, 1] images and the
exported artifact carries its own preprocessing.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class Normalize(nn.Module):
    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class ImageClassifier(nn.Module):
    """``forward(x)`` -> logits; ``forward_features(x)`` -> penultimate features.

    Subclasses implement ``_backbone`` (normalised images -> pooled feature vector) and set
    ``self.fc`` and ``self.feature_dim``.
    """

    feature_dim: int

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)

    def _backbone(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate (pooled) features of [0, 1] images: the contrastive head's input."""
        return self._backbone(self.normalize(x))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def residual_stages(block, in_planes: int, stages: Sequence[tuple[int, int]]) -> tuple[nn.Sequential, int]:
    """The residual trunk of a ResNet-style model: ``stages`` of ``(planes, blocks)``, the first
    block of every stage after the first striding by 2; ``block(in_planes, planes, stride)``.
    Returns the trunk and its output channels."""
    layers = []
    for i, (planes, blocks) in enumerate(stages):
        for j in range(blocks):
            layers.append(block(in_planes, planes, 2 if (i > 0 and j == 0) else 1))
            in_planes = planes
    return nn.Sequential(*layers), in_planes

"""Model registry: ``create_model(name, num_classes, **kw)``.

Every model maps [0, 1] NCHW images to logits with normalisation as its first layer, and
exposes ``forward_features`` (penultimate features) for the contrastive head.
"""

from __future__ import annotations

from typing import Sequence

from training import CIFAR10_MEAN, CIFAR10_STD
from training.models.base import ImageClassifier, Normalize
from training.models.preact_resnet import PreActResNet
from training.models.wide_resnet import WideResNet
from training.registry import Registry

MODELS: Registry[ImageClassifier] = Registry("model")


@MODELS.register("preact_resnet18")
def preact_resnet18(num_classes: int = 10, width: float = 1.0, **kw) -> ImageClassifier:
    return PreActResNet((2, 2, 2, 2), num_classes=num_classes, width=width, **kw)


@MODELS.register("preact_resnet18_half")
def preact_resnet18_half(num_classes: int = 10, **kw) -> ImageClassifier:
    return PreActResNet((2, 2, 2, 2), num_classes=num_classes, width=0.5, **kw)


@MODELS.register("preact_resnet18_quarter")
def preact_resnet18_quarter(num_classes: int = 10, **kw) -> ImageClassifier:
    return PreActResNet((2, 2, 2, 2), num_classes=num_classes, width=0.25, **kw)


@MODELS.register("wrn28_10")
def wrn28_10(num_classes: int = 10, **kw) -> ImageClassifier:
    return WideResNet(28, 10, num_classes=num_classes, **kw)


@MODELS.register("wrn34_10")
def wrn34_10(num_classes: int = 10, **kw) -> ImageClassifier:
    return WideResNet(34, 10, num_classes=num_classes, **kw)


@MODELS.register("tiny_cnn")
def tiny_cnn(num_classes: int = 10, width: float = 1.0, **kw) -> ImageClassifier:
    """A 4-block PreAct ResNet at 1/8 width: seconds per epoch on a CPU, for tests and smoke runs."""
    return PreActResNet((1, 1, 1, 1), num_classes=num_classes, width=0.125 * width, **kw)


def create_model(
    name: str,
    num_classes: int = 10,
    mean: Sequence[float] = CIFAR10_MEAN,
    std: Sequence[float] = CIFAR10_STD,
    **kw,
) -> ImageClassifier:
    """Build a registered model; ``mean``/``std`` become its first (normalisation) layer."""
    return MODELS.get(name)(num_classes=num_classes, mean=mean, std=std, **kw)


def model_names() -> list[str]:
    return MODELS.names()


__all__ = ["create_model", "model_names", "ImageClassifier", "Normalize", "MODELS"]

"""clead training backend: data, models, attacks, methods, evaluation and export.

Contract used everywhere: images are float tensors in [0, 1], NCHW; models return logits
and normalise internally (see ``training.models.base``).
"""

__version__ = "0.1.0"

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)

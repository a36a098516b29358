"""Every registered model: logits shape, features, normalisation as the first layer."""

from __future__ import annotations

import pytest
import torch

from training import CIFAR10_MEAN, CIFAR10_STD
from training.models import create_model, model_names

BIG = {"wrn28_10", "wrn34_10"}  # 36M+ parameters: one image is enough on a CPU


@pytest.fixture(scope="module")
def models():
    """Build each registered model once (the WRNs take a while to initialise)."""
    torch.manual_seed(0)
    return {name: create_model(name, num_classes=7).eval() for name in model_names()}


@pytest.mark.parametrize("name", model_names())
def test_logits_and_features_shapes(models, name):
    model = models[name]
    n = 1 if name in BIG else 3
    x = torch.rand(n, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
        features = model.forward_features(x)
    assert logits.shape == (n, 7) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    assert features.shape == (n, model.feature_dim)
    assert torch.allclose(model.forward_head(features), logits, atol=1e-5)


@pytest.mark.parametrize("name", sorted(set(model_names()) - BIG))
def test_input_gradient_flows(models, name):
    """Attacks need d logits / d input; a model that blocks it would look robust."""
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    models[name](x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["tiny_cnn", "preact_resnet18_quarter"])
def test_normalisation_is_the_first_layer(name):
    torch.manual_seed(1)
    model = create_model(name).eval()
    twin = create_model(name, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)).eval()
    weights = {k: v for k, v in model.state_dict().items() if not k.startswith("normalize.")}
    twin.load_state_dict(weights, strict=False)
    x = torch.rand(4, 3, 32, 32)
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(model(x), twin((x - mean) / std), atol=1e-5)
        assert not torch.allclose(model(x), twin(x), atol=1e-3)  # the normalisation matters
    # Mean and std are buffers: saved with the weights, moved with the model, not trained.
    assert {"normalize.mean", "normalize.std"} <= set(model.state_dict())
    assert not any(n.startswith("normalize.") for n, _ in model.named_parameters())


def test_width_scales_parameters():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(create_model("preact_resnet18", width=0.25)) < count(create_model("preact_resnet18", width=0.5))
    assert count(create_model("preact_resnet18_quarter")) == count(create_model("preact_resnet18", width=0.25))
    assert count(create_model("tiny_cnn")) < 200_000


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError) as info:
        create_model("resnet50")
    for name in model_names():
        assert name in str(info.value)


def test_bad_architecture_arguments_raise():
    from training.models.wide_resnet import WideResNet

    with pytest.raises(ValueError, match="width"):
        create_model("preact_resnet18", width=0)
    with pytest.raises(ValueError, match="depth"):
        WideResNet(depth=30)

"""Session fixtures shared by the whole suite: the shared CIFAR-10 and a trained tiny model.

``trained_tiny`` trains ``tiny_cnn`` with plain cross-entropy on a few thousand CIFAR-10
training images (about 15 s on two CPU cores), so attack and evaluation tests can assert
properties that only hold for a model that has learnt something (an untrained network's
accuracy is chance, so "robust <= clean" would be vacuous). The weights are cached in
pytest's cache directory, keyed by the recipe, so reruns skip the training.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

# One intra-op thread: on a small shared CPU, torch's OpenMP threads spin against other
# processes and a 2-thread run can be ten times slower than a 1-thread one.
torch.set_num_threads(int(os.environ.get("CLEAD_TEST_THREADS", "1")))

REPO_ROOT = Path(__file__).resolve().parents[1]
CIFAR_ROOT = REPO_ROOT.parent / "shared" / "data" / "cifar10"

# The tiny model's training recipe; changing it retrains (the cache key is its hash).
TINY_RECIPE = {"model": "tiny_cnn", "train_images": 4000, "epochs": 6, "batch_size": 128,
               "max_lr": 0.2, "weight_decay": 5e-4, "seed": 0, "test_images": 1000}


@pytest.fixture(scope="session")
def cifar_root() -> Path:
    """The read-only shared CIFAR-10 (train.tar.gz / test.tar.gz), resolved from the repo root."""
    if not (CIFAR_ROOT / "test.tar.gz").is_file():
        pytest.skip(f"shared CIFAR-10 not found at {CIFAR_ROOT}")
    return CIFAR_ROOT


def _train_tiny(train, recipe: dict):
    import torch.nn.functional as F

    from training.data import BatchLoader
    from training.models import create_model

    torch.manual_seed(recipe["seed"])
    model = create_model(recipe["model"], num_classes=len(train.classes))
    loader = BatchLoader(train, recipe["batch_size"], shuffle=True, augment=False, seed=recipe["seed"])
    opt = torch.optim.SGD(model.parameters(), lr=recipe["max_lr"], momentum=0.9, nesterov=True, weight_decay=recipe["weight_decay"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe["max_lr"], total_steps=recipe["epochs"] * len(loader))
    model.train()
    for epoch in range(recipe["epochs"]):
        loader.set_epoch(epoch)
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


@pytest.fixture(scope="session")
def trained_tiny(cifar_root, request, tmp_path_factory):
    """(tiny_cnn trained on CIFAR-10 train images, in eval mode; held-out test ImageSet)."""
    from training.data import load_split
    from training.models import create_model

    recipe = TINY_RECIPE
    g = torch.Generator().manual_seed(recipe["seed"])
    train_full = load_split(str(cifar_root), "train")
    test_full = load_split(str(cifar_root), "test")
    train = train_full.subset(torch.randperm(len(train_full), generator=g)[: recipe["train_images"]].sort().values)
    test = test_full.subset(torch.randperm(len(test_full), generator=g)[: recipe["test_images"]].sort().values)

    key = hashlib.sha1(json.dumps([recipe, torch.__version__], sort_keys=True).encode()).hexdigest()[:12]
    pytest_cache = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider
    folder = pytest_cache.mkdir("clead-tiny") if pytest_cache else tmp_path_factory.mktemp("clead-tiny")
    cache = Path(folder) / f"tiny-{key}.pt"
    model = create_model(recipe["model"], num_classes=len(train.classes))
    try:
        model.load_state_dict(torch.load(cache, weights_only=True))
        model.eval()
    except (FileNotFoundError, RuntimeError, EOFError):
        model = _train_tiny(train, recipe)
        torch.save(model.state_dict(), cache)

    with torch.no_grad():
        acc = (model(test.images.float() / 255).argmax(1) == test.labels).float().mean().item()
    assert acc > 0.30, f"tiny_cnn reached only {acc:.1%} test accuracy; the fixture should clearly beat chance"
    return model, test

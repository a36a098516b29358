"""The suspicion score added to an exported artifact (training/suspicion.py)."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch

from training.export import export_artifact, sha256_file
from training.models import create_model
from training.suspicion import SuspicionConfig, augment_artifact, rebuild_classifier

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
SHIPPED = Path(__file__).resolve().parents[2] / "models" / "cifar10"


def jit_load(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location="cpu").eval()


@pytest.fixture
def plain_artifact(tmp_path) -> Path:
    torch.manual_seed(0)
    model = create_model("tiny_cnn").eval()
    return export_artifact(model, tmp_path / "plain.pt", {"classes": CLASSES, "name": "tiny", "version": "1",
                                                           "architecture": "tiny_cnn", "model_kwargs": {},
                                                           "metrics": {"clean_acc": 0.5}})


def augment(src: Path, out: Path, n_proto: int = 200, n_val: int = 300, seed: int = 0) -> Path:
    g = torch.Generator().manual_seed(seed)
    protos = torch.randint(0, 256, (n_proto, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.arange(n_proto) % 10
    val = torch.randint(0, 256, (n_val, 3, 32, 32), dtype=torch.uint8, generator=g)
    return augment_artifact(src, out, protos, labels, val, SuspicionConfig(prototype_images=n_proto, val_size=n_val))


def test_augmented_logits_are_bit_identical_and_metadata_kept(plain_artifact, tmp_path):
    out = augment(plain_artifact, tmp_path / "scored.pt")
    before, after = jit_load(plain_artifact), jit_load(out)
    x = torch.rand(16, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(before(x), after(x))
        logits, raw, score = after.suspicion(x)
    assert torch.equal(before(x), logits)
    assert ((score >= 0) & (score <= 1)).all() and ((raw >= 0) & (raw <= 2)).all()
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["sha256"] == sha256_file(out)
    assert meta["metrics"] == {"clean_acc": 0.5}
    assert meta["suspicion"]["threshold"] == 0.95
    assert meta["suspicion"]["logits_from"] == json.loads(plain_artifact.with_suffix(".json").read_text())["sha256"]
    from training.evaluation.report import describe_model  # so clead-train eval --resume takes the original's reports
    assert describe_model(out, meta)["logits_from"] == meta["suspicion"]["logits_from"]
    assert "logits_from" not in describe_model(plain_artifact, json.loads(plain_artifact.with_suffix(".json").read_text()))


def test_rebuild_from_an_augmented_artifact_gives_the_same_classifier(plain_artifact, tmp_path):
    out = augment(plain_artifact, tmp_path / "scored.pt")
    model, _ = rebuild_classifier(out)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), jit_load(plain_artifact)(x))


def test_score_is_differentiable_in_raw(plain_artifact, tmp_path):
    scripted = jit_load(augment(plain_artifact, tmp_path / "scored.pt"))
    x = torch.rand(3, 3, 32, 32, requires_grad=True)
    _, raw, _ = scripted.suspicion(x)
    raw.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.cifar
@pytest.mark.slow
def test_threshold_flags_about_the_rate_on_held_out_clean_images(trained_tiny, tmp_path):
    """Calibrated on 500 clean images, the threshold flags 5% (+- 3 binomial sd) of 500 others."""
    model, test = trained_tiny
    src = export_artifact(model, tmp_path / "tiny.pt", {"classes": CLASSES, "architecture": "tiny_cnn",
                                                       "model_kwargs": {}})
    perm = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))  # the set is sorted by class
    images, labels = test.images[perm][:, :3], test.labels[perm]
    calib, held_out = images[:500], images[500:1000]
    out = augment_artifact(src, tmp_path / "scored.pt", images[:500], labels[:500], calib,
                           SuspicionConfig(prototype_images=500, val_size=500))
    with torch.no_grad():
        _, _, score = jit_load(out).suspicion(held_out.float() / 255)
    rate = float((score > 0.95).float().mean())
    sd = math.sqrt(0.05 * 0.95 / len(held_out))
    assert abs(rate - 0.05) <= 3 * sd, rate


@pytest.mark.parametrize("name", ["clead", "baseline"])
def test_shipped_artifacts_carry_the_score(name):
    path = SHIPPED / f"{name}.pt"
    meta = json.loads(path.with_suffix(".json").read_text())
    assert path.stat().st_size < 15e6
    assert sha256_file(path) == meta["sha256"]
    assert meta["suspicion"]["threshold"] == 0.95 and "autoattack_acc" in meta["metrics"]
    module = jit_load(path)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        logits, _, score = module.suspicion(x)
        assert torch.equal(logits, module(x))
    assert ((score >= 0) & (score <= 1)).all()

"""training/suspicion_eval.py: the detection metrics and the adaptive attack."""

from __future__ import annotations

import json

import pytest
import torch

from training.attacks import create_attack
from training.export import export_artifact, load_artifact
from training.suspicion import SuspicionConfig, augment_artifact
from training.suspicion_eval import (EvalConfig, Scored, adaptive_objective, evaluate_model, markdown, roc_auc,
                                     scores_of, write_outputs)

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def test_roc_auc_is_the_mann_whitney_statistic():
    assert roc_auc(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 3.0])) == 1.0
    assert roc_auc(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0])) == 0.0
    assert roc_auc(torch.tensor([0.0, 2.0]), torch.tensor([1.0, 3.0])) == 0.75
    assert roc_auc(torch.tensor([1.0]), torch.tensor([1.0])) == 0.5
    assert roc_auc(torch.tensor([1.0]), torch.tensor([])) is None


@pytest.fixture(scope="module")
def scored_tiny(trained_tiny, tmp_path_factory):
    model, test = trained_tiny
    root = tmp_path_factory.mktemp("scored-tiny")
    src = export_artifact(model, root / "tiny.pt", {"classes": CLASSES, "architecture": "tiny_cnn", "model_kwargs": {}})
    perm = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))
    images, labels = test.images[perm][:, :3], test.labels[perm]
    out = augment_artifact(src, root / "scored.pt", images[:400], labels[:400], images[400:700],
                           SuspicionConfig(prototype_images=400, val_size=300))
    return out, images[700:760].float() / 255, labels[700:760]


@pytest.mark.cifar
@pytest.mark.slow
def test_adaptive_attack_lowers_the_score(scored_tiny):
    """Knowing the detector, PGD finds images with a lower raw score than plain PGD does."""
    artifact, x, y = scored_tiny
    model = Scored(load_artifact(artifact)[0]).eval()
    pgd = create_attack("pgd", eps=8 / 255, steps=5)
    torch.manual_seed(0)
    plain = scores_of(model, pgd(model, x, y), 100)
    torch.manual_seed(0)
    adaptive = scores_of(model, pgd(model, x, y, objective=adaptive_objective(10.0)), 100)
    assert float(adaptive["raw"].mean()) < float(plain["raw"].mean())


@pytest.mark.cifar
@pytest.mark.slow
def test_evaluate_model_writes_rows_and_markdown(scored_tiny, tmp_path):
    artifact, x, y = scored_tiny
    config = EvalConfig(n=len(x), attacks=("fgsm",), adaptive_weights=(1.0,), adaptive_steps=2)
    result = evaluate_model(artifact, x, y, config)
    assert result["clean_acc"] > 0.3
    fgsm = result["attacks"]["fgsm"]
    assert fgsm["robust_acc"] <= result["clean_acc"]
    assert 0 <= fgsm["roc_auc"] <= 1 and fgsm["fooled"] >= 0
    assert set(result["adaptive"]) == {"pgd2-w1"}
    results = {"config": {"n": len(x), "eps": 8 / 255, "seed": 0}, "models": {"tiny": result}}
    write_outputs(results, config, tmp_path / "out", tmp_path / "suspicion.md", command="cmd one")
    text = (tmp_path / "suspicion.md").read_text()
    assert "| tiny | fgsm |" in text and "**adaptive** pgd2-w1" in text and "cmd one" in text
    saved = json.loads((tmp_path / "out" / "tiny.json").read_text())
    assert saved["attacks"]["fgsm"] == fgsm
    assert markdown(results).count("| tiny |") == 3
    # The sample sizes are the artifact's own (clead-train suspicion augment --val-size), not assumed.
    meta = json.loads(artifact.with_suffix(".json").read_text())["suspicion"]
    assert result["calibration_images"] == meta["calibration_images"]
    assert f"tiny {meta['calibration_images']:,} / {meta['prototype_images']:,}" in text

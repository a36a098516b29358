"""The demo shows each model's suspicion score for the clean and the adversarial image."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from demo import lab

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "cifar10"


def test_shipped_models_show_suspicion_for_clean_and_adversarial():
    models = lab.load_models(SHIPPED / "baseline.pt", SHIPPED / "clead.pt")
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    result = lab.run_lab(models, x, "FGSM", 8 / 255, 1, "each")
    for role, o in result.outcomes.items():
        assert 0 <= o.clean_suspicion <= 1 and 0 <= o.adversarial_suspicion <= 1
        assert o.threshold == 0.95
        assert "suspicion" in o.verdict() and "clean" in o.verdict() and "adversarial" in o.verdict()
        assert o.clean_suspicion == pytest.approx(lab.local_suspicion(models[role], x))


def test_plain_artifacts_show_no_suspicion(artifacts):
    models = lab.load_models(artifacts["baseline"], artifacts["hardened"])
    result = lab.run_lab(models, torch.rand(1, 3, 32, 32), "FGSM", 8 / 255, 1, "each")
    for o in result.outcomes.values():
        assert o.clean_suspicion is None and "suspicion" not in o.verdict()

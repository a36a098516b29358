"""Attack throughput on one batch: FGSM, PGD-10 and APGD-CE (its default 100 iterations),
through the same registry training and evaluation use."""

from __future__ import annotations

import pytest
import torch

from benchmarks.common import CLASSES, build_model
from benchmarks.conftest import record

ATTACKS = {"fgsm": {}, "pgd": {"steps": 10}, "apgd-ce": {}}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack(benchmark, scale, name):
    from training.attacks import create_attack

    benchmark.group = "attack"
    model = build_model(scale, "quarter").eval()
    attack = create_attack(name, eps=8 / 255, **ATTACKS[name])
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(scale.train_batch, 3, 32, 32, generator=gen)
    y = torch.randint(0, len(CLASSES), (scale.train_batch,), generator=gen)
    rounds = 2 if name == "apgd-ce" else scale.rounds  # APGD-CE is 100 iterations: ~10x PGD-10
    x_adv = benchmark.pedantic(attack, args=(model, x, y), rounds=min(rounds, scale.rounds), warmup_rounds=1)
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6  # timed a real attack, inside its budget
    label = "pgd-10" if name == "pgd" else name
    record(benchmark, scale.train_batch, kind="attack", attack=label, model="quarter",
           steps=getattr(attack, "steps", 1))

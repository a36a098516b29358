"""Cost of the suspicion score: the shipped artifact's ``suspicion`` method against its plain
``forward``, both as the server runs them (``Predictor``: frozen, channels_last on CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks.conftest import record

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "cifar10"


@pytest.fixture(scope="module")
def predictor():
    from serving.predictor import Predictor

    return Predictor.from_artifact(str(SHIPPED / "clead.pt"))


@pytest.mark.parametrize("batch", (1, 8))
@pytest.mark.parametrize("method", ("forward", "suspicion"))
def test_suspicion_cost(benchmark, scale, predictor, method, batch):
    benchmark.group = f"suspicion-batch{batch}"
    x = torch.rand(batch, 3, 32, 32)
    call = predictor.forward if method == "forward" else predictor.forward_scored
    out = benchmark.pedantic(lambda: call(x), rounds=max(scale.rounds, 20), iterations=5, warmup_rounds=2)
    logits = out if method == "forward" else out[0]
    assert logits.shape == (batch, 10)
    record(benchmark, batch, kind="suspicion", method=method, batch=batch, device="cpu")

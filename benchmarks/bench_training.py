"""Training-step throughput of every method on the same model, batch and attack steps.

One step is what the loop in ``training/train.py`` does per batch: ``perturb`` (the inner
attack), the method's forward, ``backward`` and the optimiser step. The report divides
C-LEAD by PGD-AT and by TRADES at each step count (design budgets <= 1.25 and <= 1.0).
"""

from __future__ import annotations

import time

import pytest
import torch

from benchmarks.common import CLASSES, build_model
from benchmarks.conftest import record

METHODS = ("standard", "pgd-at", "trades", "clead", "clead-sg")
# Variants measured beside the registered methods: name -> (method, its options).
VARIANTS = {"clead-sg": ("clead", {"clean_grad": False})}  # stop-gradient clean view


def make_step(method_name: str, steps: int, model: torch.nn.Module, batch: int, device: str = "cpu"):
    from training.config import TrainConfig
    from training.methods import create_method

    cfg = TrainConfig()
    method_name, overrides = VARIANTS.get(method_name, (method_name, {}))
    cfg.method.name, cfg.attack.steps = method_name, steps
    cfg.method.options.update(overrides)
    method = create_method(model, cfg).to(device)
    method.train()
    optimizer = torch.optim.SGD(method.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, 32, 32, generator=gen)
    y = torch.randint(0, len(CLASSES), (batch,), generator=gen)
    x, y = x.to(device), y.to(device)

    def step() -> float:
        extra = method.perturb(x, y)
        out = method(x, y, **extra)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()
        return float(out["loss"].detach())

    return step


@pytest.mark.parametrize("steps", [3, 10])
def test_train_steps_interleaved(benchmark, scale, steps):
    """Every method's step, round-robin: round r runs all four methods once (in an order that
    rotates with r), so drift from other jobs on a shared machine hits all methods alike. The
    report takes per-method medians and the median of the per-round time ratios."""
    benchmark.group = f"train-step-{steps}"
    runs = {m: make_step(m, steps, build_model(scale, "quarter"), scale.train_batch) for m in METHODS}
    for step in runs.values():  # warm-up: allocator, autograd graph caches
        step()
    seconds: dict[str, list[float]] = {m: [] for m in METHODS}

    def rounds() -> None:
        for r in range(scale.rounds):
            order = METHODS[r % len(METHODS):] + METHODS[: r % len(METHODS)]
            for m in order:
                start = time.perf_counter()
                loss = runs[m]()
                seconds[m].append(time.perf_counter() - start)
                assert loss == loss  # finite: a NaN would mean we timed a broken step

    benchmark.pedantic(rounds, rounds=1, iterations=1)
    record(benchmark, scale.train_batch, kind="train-interleaved", steps=steps, model="quarter", seconds=seconds)


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["pgd-at", "clead"])
def test_train_step_amp_cuda(benchmark, scale, method):
    """bf16 autocast training step on CUDA at batch 256 (the loop's default on GPUs)."""
    benchmark.group = "gpu-train-step"
    model = build_model(scale, "full").cuda().to(memory_format=torch.channels_last)
    inner = make_step(method, 10, model, 256, device="cuda")

    def step() -> float:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = inner()
        torch.cuda.synchronize()
        return loss

    benchmark.pedantic(step, rounds=scale.rounds, warmup_rounds=2)
    record(benchmark, 256, kind="train-gpu", method=method, steps=10, model="full",
           device=torch.cuda.get_device_name())

"""Inference throughput versus batch size: the exported artifact (what the servers load)
against the eager model it came from, and channels_last; CUDA bf16/fp16 only on a GPU."""

from __future__ import annotations

import pytest
import torch

from benchmarks.common import build_model
from benchmarks.conftest import record

BATCHES = (1, 4, 16, 64, 256)
VARIANTS = ("eager", "torchscript", "channels_last")


def load_variant(variant: str, scale, width: str, artifacts, device: str = "cpu") -> torch.nn.Module:
    if variant == "torchscript":
        from serving.artifact import load_artifact  # the servers' own loader

        return load_artifact(artifacts[width], device=device)[0]
    model = build_model(scale, width).eval().to(device)
    return model.to(memory_format=torch.channels_last) if variant == "channels_last" else model


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("width", ["quarter", "full"])
def test_inference(benchmark, scale, artifacts, width, variant, batch):
    if width == "full" and (variant == "channels_last" or batch == 4):
        pytest.skip("full width: eager and artifact at 1, 16, 64, 256 only (keeps `make bench` under 20 min)")
    benchmark.group = f"inference-{width}"
    model = load_variant(variant, scale, width, artifacts)
    x = torch.rand(batch, 3, 32, 32)
    if variant == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)

    def forward() -> torch.Tensor:
        with torch.inference_mode():
            return model(x)

    heavy = width == "full" and batch >= 64
    logits = benchmark.pedantic(forward, rounds=min(2 if heavy else scale.rounds, scale.rounds), warmup_rounds=1)
    assert logits.shape == (batch, 10)
    record(benchmark, batch, kind="inference", width=width, variant=variant, batch=batch, device="cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("variant", ["eager", "torchscript"])
def test_inference_cuda(benchmark, scale, artifacts, variant, dtype):
    benchmark.group = "gpu-inference"
    model = load_variant(variant, scale, "full", artifacts, device="cuda").to(memory_format=torch.channels_last)
    x = torch.rand(256, 3, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype)

    def forward() -> torch.Tensor:
        with torch.inference_mode(), torch.autocast("cuda", dtype=amp or torch.float32, enabled=amp is not None):
            out = model(x)
        torch.cuda.synchronize()
        return out

    benchmark.pedantic(forward, rounds=20, warmup_rounds=3)
    record(benchmark, 256, kind="inference-gpu", width="full", variant=variant, dtype=dtype, batch=256,
           device=torch.cuda.get_device_name())

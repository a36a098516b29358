"""Served throughput and latency: TorchServe (our handler), TorchServe's stock image
classifier (the anchor) and Triton, each started here on loopback ports and loaded with a
bounded closed loop at several concurrencies; plus the in-process ceiling they are divided by.

The ceiling is :class:`serving.predictor.Predictor` (the code both of our servers run) decoding
and classifying the same PNGs in batches of the servers' batch size, in this process, in the
same run. Everything served uses the shipped configuration (``ArchiveConfig`` /
``TritonServeConfig`` defaults); ``test_tuning`` sweeps the alternatives it was chosen from.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import pytest
import torch

from benchmarks.conftest import record
from benchmarks.load import Target, run_load, torchserve_target, triton_target
from serving.archive import ArchiveConfig
from serving.torchserve import ServerConfig, TorchServe, free_port, read_keys
from serving.triton import TritonProcess, TritonServeConfig

pytestmark = pytest.mark.server

CONCURRENCY = (1, 8, 32, 64)
STOCK_HANDLER = Path(__file__).resolve().parent / "stock_handler.py"


@dataclass
class Served:
    """A running server: a load target per model, and where to read its batch sizes if the
    answers do not carry them (the stock handler's do not)."""

    name: str
    targets: dict[str, Target]
    batch_log: Optional[Path] = None
    batch_size: int = 0
    delay_ms: float = 0.0
    stats: dict = field(default_factory=dict)


def torchserve_config(workdir: Path, archive: ArchiveConfig) -> ServerConfig:
    ports = [free_port() for _ in range(5)]
    return ServerConfig(workdir=workdir, inference_port=ports[0], management_port=ports[1], metrics_port=ports[2],
                        grpc_inference_port=ports[3], grpc_management_port=ports[4], archive=archive,
                        # TorchServe itself, comparable with the stock handler and Triton; the front's
                        # own cost is measured by benchmarks/front_overhead.py (docs/serving.md).
                        front=False)


def start_torchserve(models: dict[str, Path], workdir: Path, archive: ArchiveConfig, name: str):
    server = TorchServe(models, torchserve_config(workdir, archive))
    server.start()
    key = read_keys(server.workdir).get("inference")
    targets = {m: torchserve_target(server.config.inference_url, m, key) for m in models}
    served = Served(name, targets, server.workdir / "logs" / "model_metrics.log", archive.batch_size,
                    archive.max_batch_delay_ms)
    return server, served


@pytest.fixture(scope="module", params=["torchserve", "stock", "triton"])
def server(request, artifacts, tmp_path_factory):
    """One server at a time (module scope, parametrised: pytest finishes one before the next)."""
    name = request.param
    if name == "triton":
        from serving.tritonenv import ensure_env

        ensure_env()  # one-time venv; outside the server's own start timeout
        config = TritonServeConfig(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
        with TritonProcess(artifacts, config) as triton:
            yield Served(name, {m: triton_target(triton.url, m) for m in artifacts}, None, config.max_batch_size,
                         config.max_queue_delay_us / 1000)
        return
    archive = ArchiveConfig(handler=str(STOCK_HANDLER)) if name == "stock" else ArchiveConfig()
    models = {"quarter": artifacts["quarter"]} if name == "stock" else dict(artifacts)
    ts, served = start_torchserve(models, tmp_path_factory.mktemp(name), archive, name)
    try:
        yield served
    finally:
        ts.stop()


def logged_batch_sizes(log: Path, offset: int, model: str) -> Counter:
    """Request-weighted batch sizes from TorchServe's model_metrics.log: every batch logs one
    ``PredictionTime`` line listing the request ids it served (whatever the handler)."""
    sizes: Counter = Counter()
    with open(log, "rb") as fh:
        fh.seek(offset)
        for line in fh.read().decode(errors="replace").splitlines():
            if line.split(" - ", 1)[-1].startswith("PredictionTime") and f"ModelName:{model}," in line:
                ids = re.search(r"requestID:([^|]*?),timestamp", line)
                n = len(ids.group(1).split(",")) if ids else 0
                if n:
                    sizes[n] += n
    return sizes


def measure(benchmark, served: Served, model: str, images, requests: int, concurrency: int) -> dict:
    target = served.targets[model]
    run_load(target, images, min(4 * concurrency, 128), concurrency, warmup=0)  # warm every connection
    offset = served.batch_log.stat().st_size if served.batch_log else 0
    result = benchmark.pedantic(run_load, args=(target, images, requests, concurrency), kwargs={"warmup": 0},
                                rounds=1, iterations=1)
    if result["mean_batch"] is None and served.batch_log is not None:
        sizes = logged_batch_sizes(served.batch_log, offset, model)
        result["batch_sizes"] = {str(k): v for k, v in sorted(sizes.items())}
        result["mean_batch"] = sum(sizes.values()) and sum(k * v for k, v in sizes.items()) / sum(sizes.values())
        result["batch_source"] = "model_metrics.log"
    record(benchmark, requests, kind="served", server=served.name, model=model, max_batch=served.batch_size,
           max_delay_ms=served.delay_ms, **result)
    return result


@pytest.mark.parametrize("concurrency", CONCURRENCY)
def test_served(benchmark, scale, server, images, concurrency):
    benchmark.group = "served-quarter"
    requests = scale.requests_c1 if concurrency == 1 else scale.requests
    result = measure(benchmark, server, "quarter", images, requests, concurrency)
    assert result["requests"] == requests and result["p50_ms"] > 0


def test_served_full(benchmark, scale, server, images):
    """The full-width model at concurrency 32: where the model's compute dominates."""
    if "full" not in server.targets:
        pytest.skip("the anchor serves the quarter-width model only")
    benchmark.group = "served-full"
    measure(benchmark, server, "full", images, scale.requests_full, 32)


@pytest.mark.parametrize("width", ["quarter", "full"])
def test_inprocess_ceiling(benchmark, scale, artifacts, images, width):
    """Decode + preprocess + one forward per batch of 8 (the servers' batch size), in this process."""
    from serving.predictor import Predictor

    benchmark.group = "served-ceiling"
    batch = ArchiveConfig().batch_size
    predictor = Predictor.from_artifact(str(artifacts[width]), name=width)
    requests = [{"body": image} for image in images[:batch]]
    rounds = scale.rounds * (1 if width == "full" else 8)
    answers = benchmark.pedantic(predictor.predict, args=(requests,), rounds=rounds, warmup_rounds=2)
    assert [a["batch_size"] for a in answers] == [batch] * batch
    record(benchmark, batch, kind="ceiling", model=width, server="in-process")


def test_stock_transforms_inprocess(benchmark, scale, artifacts, images):
    """What the stock handler would cost unmodified: 256-resize + 224-crop + ImageNet
    normalisation, so our 32x32 model runs on 49x the pixels (it pools adaptively)."""
    import io

    from PIL import Image
    from ts.torch_handler.image_classifier import ImageClassifier

    from serving.artifact import load_artifact

    benchmark.group = "served-ceiling"
    model = load_artifact(artifacts["quarter"])[0]
    batch = ArchiveConfig().batch_size

    def stock_224() -> torch.Tensor:
        x = torch.stack([ImageClassifier.image_processing(Image.open(io.BytesIO(b)).convert("RGB"))
                         for b in images[:batch]])
        with torch.inference_mode():
            return torch.softmax(model(x), 1)

    out = benchmark.pedantic(stock_224, rounds=scale.rounds, warmup_rounds=1)
    assert out.shape == (batch, 10)
    record(benchmark, batch, kind="ceiling", model="quarter", server="stock-224-inprocess")


# -- the configuration sweep behind the shipped defaults ----------------------------------------
TUNING = {  # name: (batch size, max batch delay ms, workers)
    "b8-d50-w1": (8, 50, 1),  # the defaults before this sweep
    "b8-d10-w1": (8, 10, 1),
    "b8-d2-w1": (8, 2, 1),  # shipped
    "b8-d1-w1": (8, 1, 1),
    "b8-d2-w2": (8, 2, 2),
    "b16-d2-w1": (16, 2, 1),
}


@pytest.fixture(scope="module", params=list(TUNING))
def tuned(request, artifacts, tmp_path_factory):
    batch, delay, workers = TUNING[request.param]
    archive = ArchiveConfig(batch_size=batch, max_batch_delay_ms=delay, workers=workers)
    ts, served = start_torchserve({"quarter": artifacts["quarter"]}, tmp_path_factory.mktemp(request.param),
                                  archive, f"torchserve-{request.param}")
    served.stats["workers"] = workers
    try:
        yield served
    finally:
        ts.stop()


@pytest.mark.parametrize("concurrency", [1, 32])
def test_tuning(benchmark, scale, tuned, images, concurrency):
    benchmark.group = "served-tuning"
    requests = scale.requests_tuning // (3 if concurrency == 1 else 1)
    measure(benchmark, tuned, "quarter", images, requests, concurrency)
    benchmark.extra_info["workers"] = tuned.stats["workers"]

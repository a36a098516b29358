"""The anchor, measured so that drift cannot decide it: our TorchServe handler and TorchServe's
stock image classifier serve the same artifact with the same batching settings, both up at
once, and their loads alternate (ours, stock, ours, stock, ...) at each concurrency. The
ratio is the median of the per-pair ratios, so a background job slowing the machine for a
while slows both sides of a pair alike."""

from __future__ import annotations

import statistics

import pytest

from benchmarks.bench_serving import CONCURRENCY, STOCK_HANDLER, start_torchserve
from benchmarks.conftest import record
from benchmarks.load import run_load
from serving.archive import ArchiveConfig

pytestmark = pytest.mark.server
PAIRS = 3


@pytest.fixture(scope="module")
def pair(artifacts, tmp_path_factory):
    started = []
    try:
        for name, archive in (("torchserve", ArchiveConfig()), ("stock", ArchiveConfig(handler=str(STOCK_HANDLER)))):
            started.append(start_torchserve({"quarter": artifacts["quarter"]}, tmp_path_factory.mktemp(name),
                                            archive, name))
        yield {served.name: served.targets["quarter"] for _, served in started}
    finally:
        for server, _ in started:
            server.stop()


@pytest.mark.parametrize("concurrency", CONCURRENCY)
def test_anchor_alternating(benchmark, scale, pair, images, concurrency):
    benchmark.group = "served-anchor"
    n = scale.requests_anchor
    runs: dict[str, list[dict]] = {"torchserve": [], "stock": []}

    def alternate() -> None:
        for _ in range(PAIRS):
            for name, target in pair.items():
                runs[name].append(run_load(target, images, n, concurrency))

    benchmark.pedantic(alternate, rounds=1, iterations=1)
    ours, stock = ([r["rps"] for r in runs[k]] for k in ("torchserve", "stock"))
    ratio = statistics.median(a / b for a, b in zip(ours, stock))
    assert ratio > 0
    record(benchmark, 2 * PAIRS * n, kind="anchor", model="quarter", concurrency=concurrency, rps_ours=ours,
           rps_stock=stock, ratio=ratio, p50_ours=statistics.median(r["p50_ms"] for r in runs["torchserve"]),
           p50_stock=statistics.median(r["p50_ms"] for r in runs["stock"]))

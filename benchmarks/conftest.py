"""Fixtures of the benchmark suite (collected only by ``python -m benchmarks.run``, never by ``make test``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks.common import SCALES, Scale, build_model, export, png_images


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--bench-scale", choices=sorted(SCALES), default="full",
                     help="full: what `make bench` measures; smoke: tiny sizes, for the suite's own test")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA; run `make bench` on a GPU machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def scale(request: pytest.FixtureRequest) -> Scale:
    return SCALES[request.config.getoption("--bench-scale")]


@pytest.fixture(scope="session")
def artifacts(scale: Scale, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``{"quarter": .../quarter.pt, "full": .../full.pt}``, exported like the shipped models."""
    root = tmp_path_factory.mktemp("bench-artifacts")
    return {name: export(build_model(scale, name), root / f"{name}.pt", name) for name in ("quarter", "full")}


@pytest.fixture(scope="session")
def images() -> list[bytes]:
    return png_images()


def record(benchmark, images_per_call: int, **info) -> None:
    """What the report needs beside pytest-benchmark's timings: images per timed call, and more."""
    benchmark.extra_info.update(images=images_per_call, threads=torch.get_num_threads(), **info)

"""Fixtures for the demo tests: tiny exported artifacts and test images made on the fly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training import CIFAR10_CLASSES
from training.export import export_artifact
from training.models import create_model


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    """Two untrained tiny_cnn artifacts with different weights, as the shipped pair would be."""
    out = tmp_path_factory.mktemp("artifacts")
    paths = {}
    for seed, (role, name) in enumerate((("baseline", "baseline"), ("hardened", "clead"))):
        torch.manual_seed(seed)
        meta = {"classes": list(CIFAR10_CLASSES), "name": name, "version": "1", "method": "test"}
        paths[role] = export_artifact(create_model("tiny_cnn").eval(), out / f"{name}.pt", meta)
    return paths


@pytest.fixture(scope="session")
def photo(tmp_path_factory) -> Path:
    """A non-square RGBA PNG larger than the model input: exercises crop, resize and alpha."""
    rng = np.random.default_rng(0)
    h, w = 120, 200
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) % 256], axis=-1)
    rgb = (rgb + rng.integers(0, 40, rgb.shape)).clip(0, 255).astype(np.uint8)
    alpha = np.full((h, w, 1), 255, np.uint8)
    alpha[:10] = 0  # a transparent band
    path = tmp_path_factory.mktemp("images") / "photo.png"
    Image.fromarray(np.concatenate([rgb, alpha], axis=-1), "RGBA").save(path)
    return path


@pytest.fixture(scope="session")
def not_an_image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("images") / "notes.png"
    path.write_text("this is text, not a PNG\n")
    return path


@pytest.fixture(scope="session")
def too_many_pixels(tmp_path_factory) -> Path:
    """Small on disk (a flat colour compresses well) but 64 megapixels once decoded."""
    path = tmp_path_factory.mktemp("images") / "huge.png"
    Image.new("RGB", (8000, 8000), (10, 200, 30)).save(path, optimize=False)
    return path


@pytest.fixture(scope="session")
def demo_url(artifacts):
    """``python -m demo.app`` on a free port (the real entry point), stopped at the end."""
    from demo.gallery import default_data_dir
    from demo.screenshot import free_port, start_app, stop_app

    port = free_port()
    data = default_data_dir()
    proc = start_app(artifacts["baseline"], artifacts["hardened"], port, data if data.is_dir() else None)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        stop_app(proc)

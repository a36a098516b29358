"""Fixtures for the serving tests: tiny exported artifacts, encoded images, a TorchServe context.

The artifacts are untrained ``tiny_cnn`` exports (serving does not care what a model learnt,
only that both engines run the same file the same way), built with the training side's own
``export_artifact`` so the file contract is the real one.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def export_tiny(path: Path, seed: int, name: str) -> Path:
    from training.export import export_artifact
    from training.models import create_model

    torch.manual_seed(seed)
    return export_artifact(create_model("tiny_cnn").eval(), path, {"classes": CLASSES, "name": name, "version": "1"})


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    """``{"clead": .../clead.pt, "baseline": .../baseline.pt}``: two different tiny models."""
    root = tmp_path_factory.mktemp("artifacts")
    return {name: export_tiny(root / f"{name}.pt", seed, name) for seed, name in enumerate(("clead", "baseline"))}


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def random_image(width: int = 32, height: int = 32, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


@pytest.fixture
def png() -> bytes:
    return encode(random_image(), "PNG")


class FakeContext:
    """Builds TorchServe's own ``Context`` as the worker does, for handler tests without a server."""

    def __init__(self, model_dir: Path, serialized: str, name: str = "clead", gpu_id=None, yaml_config=None):
        from ts.context import Context

        manifest = {"model": {"modelName": name, "serializedFile": serialized, "modelVersion": "2.0"}}
        self.context = Context(name, str(model_dir), manifest, batch_size=8, gpu=gpu_id, mms_version="0.12.0",
                               model_yaml_config=yaml_config or {})

    def for_batch(self, headers: list[dict]) -> object:
        """Attach one RequestProcessor per request, as ``ts.service.Service.predict`` does."""
        from ts.context import RequestProcessor

        self.context.request_processor = [RequestProcessor(dict(h)) for h in headers]
        return self.context


@pytest.fixture
def make_handler(artifacts):
    """``make_handler(yaml_config=..., gpu_id=...) -> (handler, FakeContext)`` for the clead artifact."""
    from serving.ts_handler import CleadHandler

    def make(gpu_id=None, yaml_config=None, artifact: Path | None = None):
        artifact = artifact or artifacts["clead"]
        fake = FakeContext(artifact.parent, artifact.name, gpu_id=gpu_id, yaml_config=yaml_config)
        handler = CleadHandler()
        handler.initialize(fake.context)
        return handler, fake

    return make

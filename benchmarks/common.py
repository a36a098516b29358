"""What every benchmark shares: the scale of the run, the models, their artifacts and test images.

The models are *untrained* (random init, fixed seed): throughput does not depend on what a
network learnt, and the suite must not wait for the shipped models to be trained. Two widths
of PreAct ResNet-18 bracket the cases: ``quarter`` (width 0.25, the width the shipped models
use on CPU), where per-request overhead dominates serving, and ``full`` (width 1.0, the
paper's), where the model's compute dominates.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
WIDTHS = {"quarter": 0.25, "full": 1.0}


@dataclass(frozen=True)
class Scale:
    """Sizes of one run. ``full`` is what ``make bench`` runs; ``smoke`` keeps the suite's own test fast."""

    model: str = "preact_resnet18"  # smoke: tiny_cnn, whatever the width parameter says
    train_batch: int = 64  # images per training step / attack call
    rounds: int = 5  # timed rounds of an in-process case (after one warm-up round)
    requests: int = 2000  # served requests per load point (the bound)
    requests_c1: int = 1000  # at concurrency 1 (sequential: half the count keeps the run under 20 min)
    requests_full: int = 300  # full-width model served: its compute is ~16x the quarter's
    requests_tuning: int = 600  # per point of the configuration sweep
    requests_anchor: int = 400  # per round of the alternating clead-vs-stock comparison (6 rounds a point)


SCALES = {
    "full": Scale(),
    "smoke": Scale(model="tiny_cnn", train_batch=8, rounds=1, requests=40, requests_c1=20, requests_full=20,
                   requests_tuning=20, requests_anchor=10),
}


def build_model(scale: Scale, width_name: str) -> torch.nn.Module:
    from training.models import create_model

    torch.manual_seed(0)
    kw = {} if scale.model == "tiny_cnn" else {"width": WIDTHS[width_name]}
    return create_model(scale.model, num_classes=len(CLASSES), **kw)


def export(model: torch.nn.Module, path: Path, name: str) -> Path:
    """The same artifact contract as the shipped models (TorchScript + metadata JSON)."""
    from training.export import export_artifact

    return export_artifact(model.eval(), path, {"classes": CLASSES, "name": name, "version": "1",
                                                 "note": "random init, for benchmarks"})


def png_images(n: int = 64, size: int = 32, seed: int = 0) -> list[bytes]:
    """``n`` distinct RGB PNGs of CIFAR size (random pixels: ~3 KB each, like a real photo at 32x32)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB").save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def threads() -> int:
    return torch.get_num_threads()


def cpu_load() -> float:
    return os.getloadavg()[0]

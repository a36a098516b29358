"""Training checkpoints: atomic writes, ``weights_only`` loads, model reconstruction.

A checkpoint is a plain dict of tensors and builtin types (loadable with
``torch.load(..., weights_only=True)``)::

    model         state_dict of the classifier
    model_name    registry name, model_kwargs: its keyword arguments (e.g. width)
    classes       label names; mean/std: the normalisation inside the model
    config        the resolved run config (nested dicts), seed, git commit, versions
    epoch         epochs completed; plus optimizer/scheduler/head/rng state for --resume
    metrics       the last epoch's validation metrics
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from training.models import ImageClassifier, create_model

LAST = "last.pt"
BEST = "best.pt"


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write via a temporary file and ``os.replace`` so a killed run never leaves a corrupt file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = resolve_checkpoint(path)
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or "model" not in state or "model_name" not in state:
        raise ValueError(f"{path} is not a clead training checkpoint (no 'model'/'model_name' entries)")
    return state


def resolve_checkpoint(path: str | os.PathLike, prefer: str = BEST) -> Path:
    """A checkpoint file, or a run directory (its ``best.pt``, else ``last.pt``)."""
    path = Path(path)
    if path.is_dir():
        for name in (prefer, BEST, LAST):
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"run directory {path} holds no {BEST} or {LAST}")
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return path


def model_from_checkpoint(path: str | os.PathLike, prefer: str = BEST) -> tuple[ImageClassifier, dict[str, Any]]:
    """Rebuild the classifier of a checkpoint (eval mode, CPU) and return it with the state."""
    state = load_checkpoint(resolve_checkpoint(path, prefer))
    model = create_model(
        state["model_name"],
        num_classes=len(state["classes"]),
        mean=state["mean"],
        std=state["std"],
        **state.get("model_kwargs", {}),
    )
    model.load_state_dict(selected_weights(state))
    return model.eval(), state


def selected_weights(state: dict[str, Any]) -> dict[str, Any]:
    """The classifier weights a checkpoint selects: its own, or their EMA when the run's
    validation chose the average (``state["selected"] == "ema"``)."""
    if state.get("selected") != "ema":
        return state["model"]
    prefix = "averaged.module."
    return {k[len(prefix):]: v for k, v in state["ema"].items() if k.startswith(prefix)}

"""Training checkpoints: atomic writes, ``weights_only`` loads, model reconstruction.

A checkpoint is a plain dict of tensors and builtin types (loadable with
``torch.load(..., weights_only=True)``)::

    model         state_dict of the classifier
    model_name    registry name, model_kwargs: its keyword arguments (e.g. width)
    classes       label names; mean/std: the normalisation inside the model
    config        the resolved run config (nested dicts), seed, git commit, versions
    epoch         epochs completed; plus optimizer/scheduler/head/rng state for --resume
    metrics       the last epoch's validation metrics

Saving ``last.pt`` first moves the previous one to ``last.prev.pt``: a ``last.pt`` found
truncated or corrupt (a full disk, a copy cut short, bit rot) is refused with an error naming
the file, and :func:`load_resumable` falls back to the previous good one with a warning.
"""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from training.models import ImageClassifier, create_model

LAST = "last.pt"
BEST = "best.pt"
# What torch.load raises on a truncated or corrupt file (a cut zip: RuntimeError "failed finding
# central directory"; random bytes: UnpicklingError or IndexError; an empty file: EOFError).
UNREADABLE = (RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError, TypeError, pickle.UnpicklingError,
              zipfile.BadZipFile)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read (truncated, corrupt) or is not a clead checkpoint."""


def previous_of(path: str | os.PathLike) -> Path:
    """``last.pt`` -> ``last.prev.pt``: where the checkpoint before it is kept."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any], keep_previous: bool | None = None) -> None:
    """Write via a temporary file and ``os.replace`` so a killed run never leaves a corrupt file.

    ``keep_previous`` (default: for ``last.pt``) first moves the existing file to ``*.prev.pt``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    if (path.name == LAST if keep_previous is None else keep_previous) and path.is_file():
        os.replace(path, previous_of(path))
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = resolve_checkpoint(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except UNREADABLE as exc:
        raise CheckpointError(f"cannot read checkpoint {path} (truncated or corrupt?): "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    if not isinstance(state, dict) or "model" not in state or "model_name" not in state:
        raise CheckpointError(f"{path} is not a clead training checkpoint (no 'model'/'model_name' entries)")
    return state


def load_resumable(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """``load_checkpoint(path)``, or, if that file is unreadable, its ``*.prev.pt`` with a warning
    (the run then redoes the epochs after it). Raises CheckpointError naming both when neither loads."""
    path = Path(path)
    try:
        return load_checkpoint(path, map_location)
    except (CheckpointError, FileNotFoundError) as exc:
        previous = previous_of(path)
        if not previous.is_file():
            raise
        try:
            state = load_checkpoint(previous, map_location)
        except CheckpointError as prev_exc:
            raise CheckpointError(f"{exc}; and the previous checkpoint: {prev_exc}") from prev_exc
        warnings.warn(f"{exc}; resuming from the previous checkpoint {previous} "
                      f"(epoch {state.get('epoch', '?')}) instead", RuntimeWarning, stacklevel=2)
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

"""The per-request suspicion score of an augmented artifact, as the server reports it.

``training/suspicion.py`` puts a ``suspicion(x) -> (logits, raw, suspicion)`` method and its
statistics (class prototypes, clean calibration scores) inside the TorchScript file and writes
the documented threshold into the metadata (``suspicion.threshold``). Serving only calls that
method: torch alone, no ``training`` import. An artifact without the method is served as before,
without the ``suspicion`` field.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping

import torch

SUSPICION_METHOD = "suspicion"  # the augmented artifact's TorchScript method
DEFAULT_THRESHOLD = 0.95  # used only if the metadata lacks one: flags 5% of clean calibration images


class SuspicionScorer:
    """Calls the artifact's suspicion method; ``describe`` makes the response fields."""

    def __init__(self, method: Any, threshold: float) -> None:
        self.method = method
        self.threshold = float(threshold)

    @classmethod
    def from_artifact(cls, module: torch.nn.Module, metadata: Mapping[str, Any]) -> "SuspicionScorer | None":
        method = getattr(module, SUSPICION_METHOD, None)
        if method is None:
            return None
        settings = metadata.get("suspicion") or {}
        if "threshold" not in settings:
            warnings.warn(f"artifact has a suspicion method but its metadata no suspicion.threshold; "
                          f"using {DEFAULT_THRESHOLD}", stacklevel=2)
        return cls(method, settings.get("threshold", DEFAULT_THRESHOLD))

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, _raw, calibrated = self.method(batch)
        return logits, calibrated

    def describe(self, score: float) -> dict[str, Any]:
        return {"suspicion": round(score, 6), "flagged": bool(score > self.threshold)}

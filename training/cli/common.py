"""What the subcommands of ``clead-train`` share."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda``[``:N``] -> a device; ``cuda`` without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda asked but torch.cuda.is_available() is False; use --device cpu or auto")
    return torch.device(name)

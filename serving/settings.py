"""The predictor's settings: what it accepts (:class:`Limits`) and how it runs the model
(:class:`RunOptions`).

Both are read from one section of a model archive's ``model-config.yaml``, ``handler:``
(TorchServe passes the file to the handler), and both engines and the CLI build them; their
defaults live here and nowhere else. Standard library only, so that ``clead-serve`` reads the
defaults for its flags without importing torch, and the model archive carries this module.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

# Triton's ``topk`` input is INT32, so it cannot carry TorchServe's ``X-TopK: all``: this value
# asks for the same thing (every class, and the unrounded probability vector). Here because both
# the server (serving/triton.py) and the torch-free client (serving/client.py) need it.
TRITON_TOPK_ALL = -1


@dataclass
class Limits:
    """Per-request limits and defaults. The server's own request-size limit should equal ``max_bytes``."""

    max_bytes: int = 10 * 1024 * 1024  # encoded image size, bytes
    max_pixels: int = 25_000_000  # width * height of the encoded image, checked before decoding
    default_topk: int = 5  # labels returned when the request does not ask


@dataclass
class RunOptions:
    """How the model runs; neither changes what a request may be."""

    bf16: bool = False  # bf16 autocast on CUDA (never on CPU); off keeps results bit-comparable
    # TorchScript on CPU: channels_last weights and inputs, and torch.jit.freeze, at load. Logits
    # agree to ~1e-8; measured 12-18% less forward time at batch 1-8 for the quarter-width model
    # on a 2-core CPU, 1-9% at full width (see serving.predictor.optimize_for_cpu).
    optimize: bool = True


def handler_section(limits: Limits, options: RunOptions) -> dict[str, Any]:
    """The ``handler:`` section of model-config.yaml: both dataclasses' fields, flat."""
    return {**asdict(limits), **asdict(options)}


def from_handler_section(section: Mapping[str, Any] | None) -> tuple[Limits, RunOptions]:
    """``(Limits, RunOptions)`` from a ``handler:`` section; a key neither knows is ignored."""
    section = section or {}

    def pick(cls: type) -> dict[str, Any]:
        return {f.name: section[f.name] for f in fields(cls) if f.name in section}

    return Limits(**pick(Limits)), RunOptions(**pick(RunOptions))

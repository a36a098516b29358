"""The predictor's settings: what it accepts (:class:`Limits`) and how it runs the model
(:class:`RunOptions`).

Both are read from one section of a model archive's ``model-config.yaml``, ``handler:``
(TorchServe passes the file to the handler), and both engines and the CLI build them; their
defaults live here and nowhere else. So do the settings of ``clead-serve triton`` and
``clead-serve redteam``. Standard library only, so that ``clead-serve`` reads the defaults for
its flags without importing torch, and the model archive carries this module.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
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


@dataclass
class TritonServeConfig:
    """``clead-serve triton``: where PyTriton listens and how it batches (serving/triton.py)."""

    host: str = "127.0.0.1"  # every Triton endpoint binds here only
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_batch_size: int = 8  # most images Triton groups into one call
    # How long Triton waits to fill a batch, microseconds. 2 ms, as TorchServe's window: a
    # longer one is added to every request's latency at low load (docs/benchmarks.md).
    max_queue_delay_us: int = 2_000
    gpu_id: int | None = 0  # used only when CUDA is available
    limits: Limits = field(default_factory=Limits)
    options: RunOptions = field(default_factory=RunOptions)


@dataclass
class RedteamConfig:
    """``clead-serve redteam``: the target, the attack and its bounds (serving/redteam.py)."""

    url: str = "http://127.0.0.1:8080"  # the inference API: TorchServe's front or TorchServe; Triton's HTTP port
    model: str = "clead"
    engine: str = "torchserve"  # what serves `url`: one of ENGINES
    metrics_url: str | None = None  # the server's Prometheus metrics; None: its batch counters are not read
    attack: str = "square"
    eps: float = 8 / 255  # L-inf radius in [0, 1] pixel units; applied on the 8-bit grid
    queries: int = 1000  # query budget per image
    n: int = 200  # test images attacked
    seed: int = 0  # image selection and the attack's randomness
    concurrency: int = 16  # HTTP requests in flight at once
    chunk: int = 50  # images attacked together (one chunk's queries per round go out concurrently)
    max_seconds: float = 1800.0  # wall-time budget of the whole run
    allow_remote: bool = False  # permit a non-loopback URL
    timeout: float = 60.0  # seconds per HTTP request
    p_init: float = 0.8  # Square's initial share of pixels changed (AutoAttack's setting with Square)
    whitebox_steps: int = 50  # APGD-CE steps of the local white-box comparison; 0 skips it

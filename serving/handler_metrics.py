"""The handler's own Prometheus metrics, through TorchServe's custom metrics API.

TorchServe's frontend already counts requests by status class (``Requests2XX`` ...) and
per model (``ts_inference_requests_total``, latency totals). What it cannot see is inside a
batch: which request failed and why, how many images shared a forward pass, and where the
handler's time goes. Per handler call the worker reports, with ``ModelName`` on each:

    CleadRequests            counter    requests handled
    CleadRequestErrors       counter    refused requests, by ErrorType (BadRequest,
                                        PayloadTooLarge, UnsupportedMediaType, ...; ModelError:
                                        the whole batch failed in the model, a 5xx)
    CleadBatchSize           histogram  images per forward pass
    CleadDecodeSeconds       histogram  the batch's time outside the forward pass (reading,
                                        checking, decoding and resizing the images, formatting)
    CleadForwardSeconds      histogram  the forward pass

TorchServe publishes backend metrics only when the metrics configuration declares them
(``model_metrics_auto_detect`` is off by default, and costs latency when on), so
:func:`metrics_config` writes the installed TorchServe's default ``metrics.yaml`` plus these;
``clead-serve up`` points ``metrics_config`` at it and sets ``metrics_mode=prometheus``.
Times are in seconds so that the histograms' default buckets (5 ms to 10 s, Prometheus's
client defaults) fit them. The archive carries this module (see ``serving/archive.py``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from serving.predictor import Predictor, is_error

REQUESTS = "CleadRequests"
ERRORS = "CleadRequestErrors"
BATCH_SIZE = "CleadBatchSize"
DECODE_SECONDS = "CleadDecodeSeconds"
FORWARD_SECONDS = "CleadForwardSeconds"
# The suspicion score (serving/suspicion.py), for artifacts that carry it: how many answers were
# scored and flagged, and the distribution of the score, so that an attack visibly moves them.
SUSPICION_SCORED = "SuspicionScored"
SUSPICION_FLAGGED = "SuspicionFlagged"
SUSPICION = "Suspicion"
MODEL_ERROR = "ModelError"  # ErrorType of a batch that failed as a whole (TorchServe answers 5xx)

# (type, name, unit, extra dimensions). The API appends ModelName and Level; the worker, Hostname.
MODEL_METRICS = (
    ("counter", REQUESTS, "count", ()),
    ("counter", ERRORS, "count", ("ErrorType",)),
    ("histogram", BATCH_SIZE, "count", ()),
    ("histogram", DECODE_SECONDS, "s", ()),
    ("histogram", FORWARD_SECONDS, "s", ()),
    ("counter", SUSPICION_SCORED, "count", ()),
    ("counter", SUSPICION_FLAGGED, "count", ()),
    ("histogram", SUSPICION, "ratio", ()),
)
DEFAULT_DIMENSIONS = ("ModelName", "Level")


class TimedPredictor(Predictor):
    """A :class:`Predictor` that remembers how long its last ``predict`` spent in and around the forward pass."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.forward_s = 0.0
        self.last: dict[str, float] = {}
        super().__init__(*args, **kwargs)

    # *args / **kwargs: whatever Predictor's signatures are, this only wraps them with a clock.
    def forward(self, *args: Any, **kwargs: Any):
        start = time.perf_counter()
        try:
            return super().forward(*args, **kwargs)
        finally:
            self.forward_s += time.perf_counter() - start

    def predict(self, *args: Any, **kwargs: Any) -> list[dict]:
        self.forward_s = 0.0
        self.last = {}
        start = time.perf_counter()
        responses = super().predict(*args, **kwargs)
        total = time.perf_counter() - start
        self.last = {"forward_s": self.forward_s, "decode_s": max(total - self.forward_s, 0.0)}
        return responses


def error_types(responses: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """How many responses failed, by their error ``type``."""
    counts: dict[str, int] = {}
    for response in responses:
        if is_error(response):
            kind = str(response.get("type") or f"HTTP{response.get('code')}")
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def _dimensions(model: str, **extra: str) -> list:
    """The caller's dimensions, then ModelName and Level given explicitly: the API would add them only
    when it knows the batch's request ids, and would otherwise tag the metric ``Level=Error``."""
    from ts.metrics.dimension import Dimension

    return [*(Dimension(k, v) for k, v in extra.items()), Dimension("ModelName", model), Dimension("Level", "Model")]


def record_batch(metrics: Any, predictor: TimedPredictor, responses: Sequence[Mapping[str, Any]]) -> None:
    """Report one handler call to TorchServe's metrics cache (``context.metrics``; None outside a worker)."""
    if metrics is None:
        return
    from ts.metrics.metric_type_enum import MetricTypes

    model = predictor.name
    metrics.add_counter(REQUESTS, len(responses), dimensions=_dimensions(model))
    for kind, n in error_types(responses).items():
        metrics.add_counter(ERRORS, n, dimensions=_dimensions(model, ErrorType=kind))
    answered = sum(1 for r in responses if not is_error(r))
    histogram = {"dimensions": _dimensions(model), "metric_type": MetricTypes.HISTOGRAM}
    if answered:  # no forward pass ran when every request of the batch was refused
        metrics.add_metric(BATCH_SIZE, answered, "count", **histogram)
        metrics.add_metric(FORWARD_SECONDS, predictor.last.get("forward_s", 0.0), "s", **histogram)
    metrics.add_metric(DECODE_SECONDS, predictor.last.get("decode_s", 0.0), "s", **histogram)
    scored = [r for r in responses if "suspicion" in r]
    if scored:  # artifacts without the score report none of these
        metrics.add_counter(SUSPICION_SCORED, len(scored), dimensions=_dimensions(model))
        metrics.add_counter(SUSPICION_FLAGGED, sum(bool(r.get("flagged")) for r in scored), dimensions=_dimensions(model))
        for r in scored:
            metrics.add_metric(SUSPICION, r["suspicion"], "ratio", **histogram)


def record_failure(metrics: Any, predictor: Predictor, requests: int) -> None:
    """The whole batch failed in the model (TorchServe answers each request with a 5xx)."""
    if metrics is None:
        return
    metrics.add_counter(REQUESTS, requests, dimensions=_dimensions(predictor.name))
    metrics.add_counter(ERRORS, requests, dimensions=_dimensions(predictor.name, ErrorType=MODEL_ERROR))


def metrics_config(default: Path | None = None) -> dict[str, Any]:
    """The installed TorchServe's default metrics configuration, with the handler's metrics added."""
    import yaml

    if default is None:
        import ts

        default = Path(ts.__file__).resolve().parent / "configs" / "metrics.yaml"
    config = yaml.safe_load(default.read_text())
    model_metrics = config.setdefault("model_metrics", {}) or {}
    config["model_metrics"] = model_metrics
    for kind, name, unit, dims in MODEL_METRICS:
        entries = model_metrics.setdefault(kind, []) or []
        model_metrics[kind] = [e for e in entries if e.get("name") != name]
        # ModelName and Level last: the custom metrics API appends them after the caller's dimensions.
        model_metrics[kind].append({"name": name, "unit": unit, "dimensions": [*dims, *DEFAULT_DIMENSIONS]})
    return config


def write_metrics_config(path: str | Path) -> Path:
    import yaml

    path = Path(path)
    path.write_text(yaml.safe_dump(metrics_config(), sort_keys=False))
    return path

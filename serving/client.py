"""Clients for both engines; importable by the demo and the benchmarks.

* :class:`TorchServeClient` talks HTTP to TorchServe's inference API (``requests``).
* :class:`TritonClient` talks to the PyTriton server through ``tritonclient`` (installed in
  the Triton environment, see ``serving/tritonenv.py``).

Both return the same response dict (see ``docs/serving.md``) and raise
:class:`PredictionError` with the HTTP-style status for a refused request.

Both retry what a restarting server answers (a refused or reset connection, 503 and, for
TorchServe, 507) with backoff, within a :class:`RetryPolicy` (attempts and a deadline);
predictions are idempotent, so a retry is safe. A 4xx is never retried, except Triton's 404
while it restarts (:meth:`TritonClient._restarting`).
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from serving.settings import TRITON_TOPK_ALL

ImageLike = bytes | bytearray | str | os.PathLike


class PredictionError(RuntimeError):
    """The server refused or failed a request; ``status`` is the HTTP status, ``body`` its JSON."""

    def __init__(self, status: int, body: Any) -> None:
        message = body.get("message") if isinstance(body, dict) else str(body)
        super().__init__(f"{status}: {message}")
        self.status = status
        self.body = body


@dataclass(frozen=True)
class RetryPolicy:
    """How a client retries one prediction the server could not take (restart, overload)."""

    attempts: int = 5  # tries in all; 1 = no retry
    backoff_s: float = 0.2  # pause before the first retry; doubles each time
    max_backoff_s: float = 2.0  # longest pause, also the cap on a server's Retry-After
    deadline_s: float = 20.0  # no retry starts later than this after the first try
    # 502: the front could not reach TorchServe (restarting); 503: no worker or busy; 507: the
    # worker died mid-batch. Never a 4xx.
    statuses: frozenset[int] = frozenset({502, 503, 507})


NO_RETRY = RetryPolicy(attempts=1)
# Triton has nothing in front of it: while `clead-serve triton` restarts a dead Triton (models
# reloaded: about 10 s on two busy cores, docs/reliability.md) its port refuses connections,
# then answers 404 until the models are loaded. Its client rides that out itself, within the
# same budget as the front's retries for TorchServe (12 tries within 20 s); 5 tries span 3 s.
TRITON_RETRY = RetryPolicy(attempts=12)
# Triton's 404 for a model in its repository that is not loaded (yet): after a restart, while
# PyTriton loads it. Before that, a restarted Triton knows no model at all ("... is not found").
TRITON_LOADING = "has no available versions"
T = TypeVar("T")


class Retryable(Exception):
    """Internal: a try the policy may repeat; ``error`` is what the caller sees if it is the last."""

    def __init__(self, error: Exception, retry_after: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


def with_retries(policy: RetryPolicy, attempt: Callable[[], T]) -> T:
    """Run ``attempt`` until it returns, raises a non-Retryable, or the policy is spent."""
    started = time.monotonic()
    for n in range(1, policy.attempts + 1):
        try:
            return attempt()
        except Retryable as retry:
            delay = min(policy.backoff_s * 2 ** (n - 1), policy.max_backoff_s)
            if retry.retry_after is not None:
                delay = min(max(delay, retry.retry_after), policy.max_backoff_s)
            if n == policy.attempts or time.monotonic() + delay - started > policy.deadline_s:
                raise retry.error from None
            time.sleep(delay)
    raise AssertionError("unreachable")


def retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def read_image(image: ImageLike) -> bytes:
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    return Path(image).read_bytes()


class TorchServeClient:
    """``predict(image, model)`` against TorchServe; sends the inference key when auth is on."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8080",
        key: str | None = None,
        key_file: str | os.PathLike | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy = RetryPolicy(),
    ) -> None:
        import requests

        self.url = url.rstrip("/")
        self.key = key
        self.key_file = Path(key_file) if key_file else None
        self.timeout = timeout
        self.retry = retry
        self.session = requests.Session()

    def _headers(self) -> dict[str, str]:
        key = self.key
        if key is None and self.key_file is not None and self.key_file.is_file():
            # Read on every call: keys can be regenerated through the token API while we run,
            # and a restarted TorchServe writes new ones.
            try:
                key = json.loads(self.key_file.read_text())["inference"]["key"]
            except (ValueError, KeyError):
                key = None  # TorchServe is writing it right now; the try fails and is retried
        return {"Authorization": f"Bearer {key}"} if key else {}

    def predict(self, image: ImageLike, model: str = "clead", topk: int | None = None) -> dict[str, Any]:
        data = read_image(image)
        return with_retries(self.retry, lambda: self._predict_once(data, model, topk))

    def _predict_once(self, data: bytes, model: str, topk: int | None) -> dict[str, Any]:
        import requests

        headers = {"Content-Type": "application/octet-stream", **self._headers()}
        if topk is not None:
            # TorchServe drops query strings on /predictions; the header reaches the handler.
            headers["X-TopK"] = str(topk)
        try:
            resp = self.session.post(f"{self.url}/predictions/{model}", data=data, headers=headers,
                                     timeout=self.timeout)
        except requests.ConnectionError as exc:  # refused, reset, or no connection within the timeout
            raise Retryable(exc) from exc
        try:
            body = resp.json()
        except ValueError:
            body = resp.text
        if resp.status_code != 200:
            error = PredictionError(resp.status_code, body)
            if resp.status_code in self.retry.statuses:
                raise Retryable(error, retry_after(resp.headers.get("Retry-After")))
            raise error
        return body

    def predict_many(
        self, images: Sequence[ImageLike], model: str = "clead", topk: int | None = None, concurrency: int = 8
    ) -> list[dict[str, Any] | PredictionError]:
        """Send ``images`` concurrently (so the server can batch them); errors are returned, not raised."""

        def one(image: ImageLike) -> dict[str, Any] | PredictionError:
            # One session per thread: requests.Session is not guaranteed thread-safe.
            client = TorchServeClient(self.url, self.key, self.key_file, self.timeout, self.retry)
            try:
                return client.predict(image, model, topk)
            except PredictionError as err:
                return err

        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            return list(pool.map(one, images))


class TritonClient:
    """``predict(image, model)`` against ``clead-serve triton`` (KServe v2 protocol over HTTP).

    Triton can only fail a whole batch, so the server reports a bad image inside the
    ``result`` output; this client turns that into the same :class:`PredictionError`.
    """

    def __init__(self, url: str = "127.0.0.1:8000", timeout: float = 30.0, retry: RetryPolicy = TRITON_RETRY) -> None:
        try:
            import tritonclient.http as httpclient
            from tritonclient.utils import InferenceServerException
        except ImportError as exc:
            raise ImportError(
                "tritonclient is not installed in this environment; run the client in the Triton "
                "environment (`clead-serve predict --engine triton ...` does that for you)"
            ) from exc
        self._http = httpclient
        self._server_error = InferenceServerException
        self.retry = retry
        self.answered: set[str] = set()  # models this client got an answer from (see _restarting)
        url = url.split("://", 1)[-1].rstrip("/")
        self.client = httpclient.InferenceServerClient(url=url, connection_timeout=timeout, network_timeout=timeout)

    def predict(self, image: ImageLike, model: str = "clead", topk: int | str | None = None) -> dict[str, Any]:
        """``topk="all"`` (as for TorchServe) asks for every class and the probability vector:
        sent as ``TRITON_TOPK_ALL``, since Triton's ``topk`` input is an INT32."""
        import numpy as np

        inputs = [self._http.InferInput("image", [1, 1], "BYTES")]
        inputs[0].set_data_from_numpy(np.array([[read_image(image)]], dtype=np.object_), binary_data=True)
        if topk is not None:
            if isinstance(topk, str) and topk.strip().lower() == "all":
                topk = TRITON_TOPK_ALL
            inputs.append(self._http.InferInput("topk", [1, 1], "INT32"))
            inputs[1].set_data_from_numpy(np.array([[int(topk)]], dtype=np.int32))
        outputs = [self._http.InferRequestedOutput("result", binary_data=True)]
        result = with_retries(self.retry, lambda: self._infer_once(model, inputs, outputs))
        body = json.loads(result.as_numpy("result").reshape(-1)[0])
        if "code" in body and "message" in body:
            raise PredictionError(body["code"], body)
        return body


    def _infer_once(self, model: str, inputs: list, outputs: list):
        import http.client

        try:
            result = self.client.infer(model, inputs, outputs=outputs)
        except (OSError, http.client.HTTPException) as exc:
            # Refused, reset, or closed mid-answer (geventhttpclient's HTTPConnectionClosed is an
            # HTTPException, not an OSError): Triton died or is restarting.
            raise Retryable(exc) from exc
        except self._server_error as exc:
            if self._restarting(model, exc):
                raise Retryable(exc) from exc
            raise
        self.answered.add(model)
        return result

    def _restarting(self, model: str, exc: Exception) -> bool:
        """Whether ``exc`` is what a restarting Triton answers: 503 (or gRPC's UNAVAILABLE), or a
        404 for a model it is loading, or for one that answered this client before (a restarted
        Triton knows no model until PyTriton has registered it again). Any other 4xx, a 404 for a
        name never answered included, is the caller's to fix and is not retried."""
        status = str(exc.status() or "")  # Triton's HTTP status as tritonclient reports it: "503"
        if status.isdigit() and int(status) in self.retry.statuses or "unavailable" in status.lower():
            return True
        return status == "404" and (TRITON_LOADING in str(exc) or model in self.answered)


def format_prediction(path: str, response: dict[str, Any]) -> str:
    """Human-readable top-k lines for the CLI."""
    lines = [f"{path}: {response['label']} ({response['probability']:.3f})  "
             f"[{response['model']} v{response['version']}, batch {response['batch_size']}]"]
    for label, prob in response["topk"].items():
        lines.append(f"  {prob:7.3f}  {label}")
    return "\n".join(lines)

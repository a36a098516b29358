"""Clients for both engines; importable by the demo and the benchmarks.

* :class:`TorchServeClient` talks HTTP to TorchServe's inference API (``requests``).
* :class:`TritonClient` talks to the PyTriton server through ``tritonclient`` (installed in
  the Triton environment, see ``serving/tritonenv.py``).

Both return the same response dict (see ``docs/serving.md``) and raise
:class:`PredictionError` with the HTTP-style status for a refused request.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

ImageLike = bytes | bytearray | str | os.PathLike


class PredictionError(RuntimeError):
    """The server refused or failed a request; ``status`` is the HTTP status, ``body`` its JSON."""

    def __init__(self, status: int, body: Any) -> None:
        message = body.get("message") if isinstance(body, dict) else str(body)
        super().__init__(f"{status}: {message}")
        self.status = status
        self.body = body


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
    ) -> None:
        import requests

        self.url = url.rstrip("/")
        self.key = key
        self.key_file = Path(key_file) if key_file else None
        self.timeout = timeout
        self.session = requests.Session()

    def _headers(self) -> dict[str, str]:
        key = self.key
        if key is None and self.key_file is not None and self.key_file.is_file():
            # Read on every call: keys can be regenerated through the token API while we run.
            key = json.loads(self.key_file.read_text())["inference"]["key"]
        return {"Authorization": f"Bearer {key}"} if key else {}

    def predict(self, image: ImageLike, model: str = "clead", topk: int | None = None) -> dict[str, Any]:
        headers = {"Content-Type": "application/octet-stream", **self._headers()}
        if topk is not None:
            # TorchServe drops query strings on /predictions; the header reaches the handler.
            headers["X-TopK"] = str(topk)
        resp = self.session.post(
            f"{self.url}/predictions/{model}", data=read_image(image), headers=headers, timeout=self.timeout
        )
        try:
            body = resp.json()
        except ValueError:
            body = resp.text
        if resp.status_code != 200:
            raise PredictionError(resp.status_code, body)
        return body

    def predict_many(
        self, images: Sequence[ImageLike], model: str = "clead", topk: int | None = None, concurrency: int = 8
    ) -> list[dict[str, Any] | PredictionError]:
        """Send ``images`` concurrently (so the server can batch them); errors are returned, not raised."""

        def one(image: ImageLike) -> dict[str, Any] | PredictionError:
            # One session per thread: requests.Session is not guaranteed thread-safe.
            client = TorchServeClient(self.url, self.key, self.key_file, self.timeout)
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

    def __init__(self, url: str = "127.0.0.1:8000", timeout: float = 30.0) -> None:
        try:
            import tritonclient.http as httpclient
        except ImportError as exc:
            raise ImportError(
                "tritonclient is not installed in this environment; run the client in the Triton "
                "environment (`clead-serve predict --engine triton ...` does that for you)"
            ) from exc
        self._http = httpclient
        url = url.split("://", 1)[-1].rstrip("/")
        self.client = httpclient.InferenceServerClient(url=url, connection_timeout=timeout, network_timeout=timeout)

    def predict(self, image: ImageLike, model: str = "clead", topk: int | None = None) -> dict[str, Any]:
        import numpy as np

        inputs = [self._http.InferInput("image", [1, 1], "BYTES")]
        inputs[0].set_data_from_numpy(np.array([[read_image(image)]], dtype=np.object_), binary_data=True)
        if topk is not None:
            inputs.append(self._http.InferInput("topk", [1, 1], "INT32"))
            inputs[1].set_data_from_numpy(np.array([[topk]], dtype=np.int32))
        outputs = [self._http.InferRequestedOutput("result", binary_data=True)]
        result = self.client.infer(model, inputs, outputs=outputs)
        body = json.loads(result.as_numpy("result").reshape(-1)[0])
        if "code" in body and "message" in body:
            raise PredictionError(body["code"], body)
        return body


def format_prediction(path: str, response: dict[str, Any]) -> str:
    """Human-readable top-k lines for the CLI."""
    lines = [f"{path}: {response['label']} ({response['probability']:.3f})  "
             f"[{response['model']} v{response['version']}, batch {response['batch_size']}]"]
    for label, prob in response["topk"].items():
        lines.append(f"  {prob:7.3f}  {label}")
    return "\n".join(lines)

"""Predictions from a running TorchServe instead of the local artifacts (``--server URL``).

Only the predictions travel: the white-box attack needs gradients, so it always runs on the
local artifact. Images are sent as PNG (lossless), so the server classifies exactly the
8-bit adversarial image the demo shows. The HTTP call is ``serving.client.TorchServeClient``.
"""

from __future__ import annotations

import io
from typing import Any, Mapping, Optional

import torch
from PIL import Image

from demo.lab import TOP_K, LabModel, TopK, to_uint8


class RemoteError(RuntimeError):
    """The server could not be reached or answered something the demo cannot read."""


def png_bytes(x: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(x)).save(buffer, format="PNG")
    return buffer.getvalue()


def parse_topk(body: Any, k: int = TOP_K) -> TopK:
    """The serving handler's answer carries ``"topk": {label: probability, ...}``."""
    topk = body.get("topk") if isinstance(body, Mapping) else None
    if not isinstance(topk, Mapping) or not topk:
        raise RemoteError(f"server answer has no 'topk' map of label -> probability: {str(body)[:200]}")
    pairs = sorted(((str(label), float(p)) for label, p in topk.items()), key=lambda lp: -lp[1])
    return pairs[:k]


class RemotePredictor:
    """``predict(model, x) -> top-k`` from TorchServe at ``url``.

    ``names`` maps a role to the server's model name; by default the artifact's own name.
    """

    def __init__(self, url: str, names: Optional[dict[str, str]] = None, timeout: float = 10.0) -> None:
        from serving.client import TorchServeClient

        self.url = url.rstrip("/")
        self.names = dict(names or {})
        self.client = TorchServeClient(self.url, timeout=timeout)

    def server_name(self, model: LabModel) -> str:
        return self.names.get(model.role) or model.meta.get("name") or model.role

    def __call__(self, model: LabModel, x: torch.Tensor) -> TopK:
        import requests

        from serving.client import PredictionError

        name = self.server_name(model)
        try:
            body = self.client.predict(png_bytes(x), name, topk=TOP_K)
        except PredictionError as err:
            raise RemoteError(f"{self.url}/predictions/{name} refused the image: {err}") from err
        except requests.RequestException as err:
            raise RemoteError(f"could not reach {self.url}/predictions/{name}: {err}") from err
        return parse_topk(body)

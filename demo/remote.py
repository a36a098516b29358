"""Predictions from a running TorchServe instead of the local artifacts (``--server URL``).

Only the predictions travel: the white-box attack needs gradients, so it always runs on the
local artifact. Images are sent as PNG (lossless), so the server classifies exactly the
8-bit adversarial image the demo shows. The HTTP call is ``serving.client.TorchServeClient``.

``clead-serve up`` turns TorchServe's token authorization on and writes the keys to
``runs/serve/key_file.json``; the predictor reads the inference key from there by default
(reread on every request, so a renewed key is picked up) or takes one given as ``key``.
TorchServe answers a missing, wrong or expired key with ``400 InvalidKeyException``, which
becomes a :class:`RemoteError` that says which key was sent and how to give the right one.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from PIL import Image

from demo.lab import TOP_K, LabModel, TopK, to_uint8

# Where `clead-serve up` (make serve) writes TorchServe's keys, relative to the repository root.
DEFAULT_KEY_FILE = Path("runs/serve/key_file.json")


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
    ``key`` is the inference key; without it, the ``inference`` key of ``key_file`` is sent when
    that file exists (none is sent otherwise: a server with ``--no-token-auth`` needs none).
    """

    def __init__(self, url: str, names: Optional[dict[str, str]] = None, timeout: float = 10.0,
                 key: Optional[str] = None, key_file: Optional[str | os.PathLike] = DEFAULT_KEY_FILE) -> None:
        from serving.client import TorchServeClient

        self.url = url.rstrip("/")
        self.names = dict(names or {})
        self.key = key
        self.key_file = Path(key_file) if key_file else None
        self.client = TorchServeClient(self.url, key=key, key_file=self.key_file, timeout=timeout)

    def server_name(self, model: LabModel) -> str:
        return self.names.get(model.role) or model.meta.get("name") or model.role

    def key_source(self) -> str:
        """Which key a request carries, in words (never the key itself)."""
        if self.key:
            return "the key given with --key"
        if self.key_file is not None and self.key_file.is_file():
            try:  # the client reads it per request and sends no key when it cannot (a file half written)
                json.loads(self.key_file.read_text())["inference"]["key"]
            except (ValueError, KeyError, TypeError) as err:
                return f"no key: cannot read the inference key from {self.key_file} ({err!r})"
            return f"the inference key of {self.key_file}"
        where = f" ({self.key_file} does not exist)" if self.key_file is not None else ""
        return f"no key{where}"

    def __call__(self, model: LabModel, x: torch.Tensor) -> TopK:
        import requests

        from serving.client import PredictionError

        name = self.server_name(model)
        try:
            body = self.client.predict(png_bytes(x), name, topk=TOP_K)
        except PredictionError as err:
            if is_key_error(err):
                raise RemoteError(self.key_message(name, err)) from err
            raise RemoteError(f"{self.url}/predictions/{name} refused the image: {err}") from err
        except requests.RequestException as err:
            raise RemoteError(f"could not reach {self.url}/predictions/{name}: {err}") from err
        except (ValueError, KeyError, TypeError) as err:
            # The key file is read on every request: one that is not TorchServe's JSON (edited, half written).
            raise RemoteError(f"cannot read the inference key from {self.key_file}: {err!r}; "
                              "point --key-file at TorchServe's key_file.json or pass --key") from err
        return parse_topk(body)

    def key_message(self, name: str, err: Exception) -> str:
        return (
            f"{self.url}/predictions/{name} refused {self.key_source()}: the inference key is missing, wrong or "
            f"expired ({err}). TorchServe makes new keys at every start and they expire after "
            "--token-expiration-min (default 24 h). Start the demo with --key-file pointing at the server's "
            f"key_file.json (default {DEFAULT_KEY_FILE}, written by `make serve`) or --key <inference key>; "
            "renew an expired key with the token API (see docs/serving.md, Security)."
        )

    def check(self, models: Mapping[str, LabModel]) -> None:
        """One small prediction per model, so a wrong key or URL shows at start, not at the first attack."""
        for model in models.values():
            self(model, torch.zeros(1, *model.input_size))


def is_key_error(err: Any) -> bool:
    """TorchServe 0.12's answer to a missing, wrong or expired key: 400 InvalidKeyException (not 401)."""
    body = getattr(err, "body", None)
    kind = body.get("type") if isinstance(body, Mapping) else None
    return getattr(err, "status", None) in (400, 401, 403) and (
        kind == "InvalidKeyException" or "Token Authorization failed" in str(body))

"""TorchServe handler: a thin ``BaseHandler`` subclass around :class:`serving.predictor.Predictor`.

TorchServe hands ``handle`` every request of a server-side batch at once; the predictor
decodes each, runs one forward pass over the good ones and returns one JSON body per
request. A bad request gets its own 4xx status through ``context.set_response_status``;
its batch-mates still get 200.

This file is the ``--handler`` of the model archive. The archive also carries a copy of the
``serving`` package (see ``serving/archive.py``), so the ``.mar`` runs wherever TorchServe
runs (KServe included) without this project installed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ts.torch_handler.base_handler import BaseHandler

from serving.artifact import ArtifactError
from serving.handler_metrics import TimedPredictor, record_batch, record_failure
from serving.predictor import TOPK_HEADER, TOPK_PARAM, Predictor, RequestError, dumps, is_error, keep_freed_memory
from serving.settings import from_handler_section

logger = logging.getLogger(__name__)


class CleadHandler(BaseHandler):
    """Image classification with per-request errors and one forward pass per batch."""

    def initialize(self, context: Any) -> None:
        # The worker process is this model's alone, so the process-wide allocator setting is ours to make.
        kept = keep_freed_memory()
        props = context.system_properties
        model_dir = Path(props.get("model_dir") or ".")
        manifest = getattr(context, "manifest", None) or {}
        model_info = manifest.get("model", {})
        serialized = model_info.get("serializedFile")
        artifact = model_dir / serialized if serialized else self._find_artifact(model_dir)
        limits, options = from_handler_section((getattr(context, "model_yaml_config", None) or {}).get("handler"))
        self.predictor: Predictor = TimedPredictor.from_artifact(
            str(artifact),
            gpu_id=props.get("gpu_id"),
            name=getattr(context, "model_name", None) or model_info.get("modelName"),
            version=model_info.get("modelVersion"),
            limits=limits,
            options=options,
        )
        self.device = self.predictor.device
        self.model = self.predictor.module
        self.context = context
        self.initialized = True
        logger.info("clead handler ready: %s on %s, limits %s, options %s, freed memory kept: %s", artifact.name,
                    self.device, limits, options, kept)

    @staticmethod
    def _find_artifact(model_dir: Path) -> Path:
        found = sorted(p for p in model_dir.iterdir() if p.suffix in (".pt", ".pt2"))
        if len(found) != 1:
            raise ArtifactError(f"expected one .pt/.pt2 model file in {model_dir}, found {[p.name for p in found]}")
        return found[0]

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[str]:
        headers = [self._headers(idx, context) for idx in range(len(data))]
        topks = [self._topk(request, h) for request, h in zip(data, headers)]
        rejected = [self._form_encoded(h) for h in headers]
        try:
            responses = self.predictor.predict(data, topks, rejected)
        except Exception:
            record_failure(getattr(context, "metrics", None), self.predictor, len(data))  # counted, then TorchServe's 5xx
            raise
        record_batch(getattr(context, "metrics", None), self.predictor, responses)
        # Under a request envelope (KServe) ``data`` holds the instances of one request, so
        # there may be more entries than HTTP requests to set a status on.
        for idx, response in enumerate(responses[: len(context.request_processor or [])]):
            context.set_response_content_type(idx, "application/json")
            if is_error(response):
                context.set_response_status(response["code"], response["type"], idx)
        return [dumps(r) for r in responses]

    @staticmethod
    def _headers(idx: int, context: Any) -> dict[str, Any]:
        if idx >= len(context.request_processor or []):
            return {}
        return {k.lower(): v for k, v in (context.get_all_request_header(idx) or {}).items() if isinstance(k, str)}

    @staticmethod
    def _form_encoded(headers: dict[str, Any]) -> RequestError | None:
        """TorchServe parses an ``application/x-www-form-urlencoded`` body as an HTML form
        before the handler sees it, which destroys binary data. That is curl ``--data-binary``'s
        default content type, so say exactly how to send the image instead."""
        content_type = str(headers.get("content-type", "")).split(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            return None
        return RequestError(
            415,
            "the image was sent as Content-Type application/x-www-form-urlencoded (curl --data-binary's "
            "default), which TorchServe decodes as a form, losing the bytes; add "
            "-H 'Content-Type: application/octet-stream' (or image/jpeg, image/png), "
            "or send it as multipart with -F data=@image.jpg",
        )

    @staticmethod
    def _topk(request: dict[str, Any], headers: dict[str, Any]) -> Any:
        """A ``topk`` field (multipart, or the query of ``/invocations``) wins over the X-TopK header.

        TorchServe 0.12 passes query strings to the handler only on ``/invocations``, not on
        ``/predictions``, so the header is the way there."""
        if TOPK_PARAM in request:
            return request[TOPK_PARAM]
        return headers.get(TOPK_HEADER)

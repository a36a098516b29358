"""The ``type`` of every JSON error the servers answer, by HTTP status: one table for all.

The predictor (``serving/predictor.py``, inside TorchServe and Triton) and the HTTP front
(``serving/front.py``) both answer ``{"code", "type", "message", "model"}``; clients and the
``CleadRequestErrors`` metric key on ``type``. Standard library only: the front imports no
torch, and the model archive carries this module for the predictor.
"""

from __future__ import annotations

ERROR_TYPES = {400: "BadRequest", 408: "RequestTimeout", 413: "PayloadTooLarge", 415: "UnsupportedMediaType",
               502: "BadGateway", 503: "ServiceUnavailable", 504: "GatewayTimeout"}


def error_type(code: int) -> str:
    """The ``type`` of an error answer with status ``code``; ``Error`` for one not in the table."""
    return ERROR_TYPES.get(code, "Error")

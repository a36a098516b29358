"""Deprecated name of :mod:`serving.predictor`, kept so that existing imports keep working.

The engine-neutral predictor (decoding, limits, batched prediction, response JSON) was called
``serving.handler``, which read as if it were TorchServe's handler; that one is
:mod:`serving.ts_handler`. Import :mod:`serving.predictor` instead: this module re-exports its
public names, warns once per process, and will be removed in a later release.
"""

from __future__ import annotations

import warnings

from serving.predictor import *  # noqa: F401,F403 - the re-export is this module's purpose
from serving.predictor import __all__  # noqa: F401

warnings.warn(
    "serving.handler is deprecated; import serving.predictor instead "
    "(the TorchServe handler is serving.ts_handler)",
    DeprecationWarning,
    stacklevel=2,
)

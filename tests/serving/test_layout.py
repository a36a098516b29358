"""How the serving package is laid out: module names, what goes into the model archive, and the
rule that serving never imports training (it runs self-contained artifacts)."""

from __future__ import annotations

import importlib
import sys

import pytest


def test_the_old_predictor_name_warns_and_re_exports(monkeypatch):
    """``serving.handler`` was the predictor's name; users' imports of it keep working, with a warning."""
    import serving.predictor as predictor

    monkeypatch.delitem(sys.modules, "serving.handler", raising=False)
    with pytest.warns(DeprecationWarning, match=r"import serving\.predictor instead"):
        shim = importlib.import_module("serving.handler")
    assert shim.__all__ == predictor.__all__
    for name in predictor.__all__:
        assert getattr(shim, name) is getattr(predictor, name), name
    # What the old module was imported for, here and in users' code.
    for name in ("Limits", "Predictor", "RequestError", "decode_image", "extract_image", "is_error", "parse_topk",
                 "select_device", "keep_freed_memory", "dumps", "IMAGE_FORMATS", "TOPK_HEADER", "TOPK_PARAM"):
        assert name in predictor.__all__, name

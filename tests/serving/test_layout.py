"""How the serving package is laid out: module names, what goes into the model archive, and the
rule that serving never imports training (it runs self-contained artifacts)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

SERVING = Path(__file__).resolve().parents[2] / "serving"


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


def test_one_table_of_error_types():
    """The predictor's and the front's error answers take their ``type`` from serving/errors.py alone."""
    from serving.errors import ERROR_TYPES
    from serving.predictor import RequestError

    for source in SERVING.glob("*.py"):
        if source.name != "errors.py":
            assert '"PayloadTooLarge"' not in source.read_text(), f"{source.name} keeps its own table of error types"
    for code in (400, 413, 415):
        assert RequestError(code, "m").to_json("clead")["type"] == ERROR_TYPES[code]
    assert RequestError(418, "m").to_json("clead")["type"] == "Error"

"""The Triton model function takes an image as raw BYTES (tritonclient, binary extension) and as
base64 text (plain-JSON Open Inference Protocol clients) alike; no server needed."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from serving.predictor import Predictor
from serving.triton import _image_bytes, make_infer_fn
from tests.serving.conftest import encode, random_image


class FakeRequest(dict):
    """What PyTriton hands the model function: ``request["image"]`` and ``request.data``."""

    @property
    def data(self) -> dict:
        return self


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP", "WEBP"])
def test_raw_files_are_kept_and_base64_text_is_decoded(fmt):
    raw = encode(random_image(40, 30, seed=2), fmt)
    assert _image_bytes(raw) == raw
    assert _image_bytes(base64.b64encode(raw)) == raw
    assert _image_bytes(np.bytes_(base64.b64encode(raw))) == raw


def test_base64_and_raw_requests_get_the_same_answer(artifacts):
    infer = make_infer_fn(Predictor.from_artifact(str(artifacts["clead"]), name="clead"))
    raw = encode(random_image(48, 40, seed=5), "PNG")
    requests = [FakeRequest(image=np.array([[raw]], dtype=np.object_)),
                FakeRequest(image=np.array([[base64.b64encode(raw)]], dtype=np.object_),
                            topk=np.array([[3]], dtype=np.int32)),
                FakeRequest(image=np.array([[b"bm90IGFuIGltYWdl"]], dtype=np.object_))]  # base64 of text
    first, second, bad = [json.loads(out["result"].reshape(-1)[0]) for out in infer(requests)]
    assert first["index"] == second["index"] and first["probability"] == second["probability"]
    assert len(second["topk"]) == 3 and first["batch_size"] == 3 - 1  # the bad one is left out of the batch
    assert bad["code"] == 415


def test_topk_minus_one_asks_for_every_class_and_other_values_under_one_are_refused(artifacts):
    """Triton's topk is INT32: -1 stands for TorchServe's ``X-TopK: all``; 0 and -2 are a 400."""
    from serving.settings import TRITON_TOPK_ALL

    infer = make_infer_fn(Predictor.from_artifact(str(artifacts["clead"]), name="clead"))
    raw = encode(random_image(seed=6), "PNG")
    requests = [FakeRequest(image=np.array([[raw]], dtype=np.object_), topk=np.array([[k]], dtype=np.int32))
                for k in (TRITON_TOPK_ALL, 0, -2, 99)]
    every, zero, minus_two, clamped = [json.loads(out["result"].reshape(-1)[0]) for out in infer(requests)]
    assert len(every["topk"]) == 10 and len(every["probabilities"]) == 10
    assert every["probabilities"][every["index"]] == pytest.approx(every["probability"], abs=1e-6)
    for refused, k in ((zero, 0), (minus_two, -2)):
        assert refused["code"] == 400 and refused["type"] == "BadRequest"
        assert f"got {k}" in refused["message"] and "-1 for every class" in refused["message"]
    assert len(clamped["topk"]) == 10 and "probabilities" not in clamped  # past the class count: clamped, as TorchServe
    assert every["batch_size"] == clamped["batch_size"] == 2  # the refused ones are left out of the batch

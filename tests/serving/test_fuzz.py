"""Property-based fuzzing of the decode path, in-process: every hostile image is a 200 or a 4xx
for its own request, never an exception out of ``Predictor.predict``, and never costs its
batch-mates their answers. The real-server half is in ``test_servers.py``.

Case counts: 2,150 generated images per run (see ``CASES``), a few seconds on one core.
"""

from __future__ import annotations

import json
import logging

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving.predictor import Limits, Predictor, is_error
from tests.serving.conftest import CLASSES, encode, random_image
from tests.serving.fuzzimages import SEEDS, bit_flipped, huge, huge_declared, spliced, truncated

CASES = {"random": 300, "truncated": 450, "bit_flipped": 600, "spliced": 500, "huge": 300}
STRATEGIES = {"random": st.binary(max_size=4096), "truncated": truncated(), "bit_flipped": bit_flipped(),
              "spliced": spliced(), "huge": huge()}
SETTINGS = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def predictor(artifacts) -> Predictor:
    return Predictor.from_artifact(str(artifacts["clead"]), limits=Limits(max_pixels=4_000_000))


@pytest.fixture(scope="module")
def unforeseen():
    """Errors logged by the predictor's last-resort catch: an exception type decode_image does not
    classify. The fuzz tests demand none, so the catch-all cannot hide a decoder bug."""
    collect = Collect()
    logger = logging.getLogger("serving.predictor")
    logger.addHandler(collect)
    yield collect.records
    logger.removeHandler(collect)


def check_answer(response: dict) -> None:
    if is_error(response):
        assert 400 <= response["code"] < 500, response
        assert response["message"]
    else:
        assert response["label"] in CLASSES and 0.0 <= response["probability"] <= 1.0


@pytest.mark.parametrize("kind", sorted(CASES))
def test_hostile_images_are_200_or_4xx(predictor, unforeseen, kind):
    seen = []

    @settings(max_examples=CASES[kind], **SETTINGS)
    @given(STRATEGIES[kind])
    def run(data: bytes) -> None:
        seen.append(data)
        [response] = predictor.predict([{"body": data}])
        check_answer(response)
        assert not unforeseen, f"unclassified decoder exception: {unforeseen[0].getMessage()}"

    run()
    assert len(seen) >= CASES[kind] * 0.9, "hypothesis ran fewer cases than asked"


def test_every_seed_decodes(predictor):
    """The seeds are valid files in odd modes (16-bit, CMYK, palette + transparency, animated): all 200."""
    for name, data in SEEDS.items():
        [response] = predictor.predict([{"body": data}])
        assert not is_error(response), (name, response)


@pytest.mark.parametrize("seed,cut", [("jpeg_rgb", 6), ("jpeg_rgb", 12), ("png_rgb", 16), ("bmp_rgb", 18),
                                      ("webp_lossy", 16)])
def test_a_file_cut_inside_its_header_is_a_400(seed, cut):
    """Pillow raises ``OSError`` (e.g. "Truncated File Read") already in ``Image.open`` for these,
    which the decode path once let escape and so failed the whole batch."""
    import io

    from PIL import Image

    from serving.predictor import IMAGE_FORMATS, RequestError, decode_image

    with pytest.raises(OSError):
        Image.open(io.BytesIO(SEEDS[seed][:cut]), formats=IMAGE_FORMATS)
    with pytest.raises(RequestError) as info:
        decode_image(SEEDS[seed][:cut], (3, 32, 32), Limits())
    assert info.value.code == 400 and "header" in info.value.message


@pytest.mark.parametrize("kind", ["png", "gif", "bmp", "jpeg"])
def test_huge_declared_dimensions_are_refused_before_decoding(kind):
    from serving.predictor import RequestError, decode_image

    with pytest.raises(RequestError) as info:
        decode_image(huge_declared(kind, 40_000, 40_000), (3, 32, 32), Limits())
    assert info.value.code == 413


@settings(max_examples=60, **SETTINGS)
@given(st.lists(st.one_of(truncated(), bit_flipped(), spliced(), huge()), min_size=1, max_size=5),
       st.randoms(use_true_random=False))
def test_bad_images_never_cost_their_batch_mates(make_handler_once, bad, rnd):
    handler, fake = make_handler_once
    good = [encode(random_image(seed=i), "PNG") for i in range(3)]
    batch = [("good", g) for g in good] + [("bad", b) for b in bad]
    rnd.shuffle(batch)
    out = handler.handle([{"body": data} for _, data in batch], fake.for_batch([{}] * len(batch)))
    for idx, ((kind, _), body) in enumerate(zip(batch, out)):
        response = json.loads(body)
        status = fake.context.get_response_status(idx)[0]
        check_answer(response)
        if kind == "good":
            assert status == 200 and response["batch_size"] >= len(good), response
        assert status == response.get("code", 200)


def test_an_unforeseen_decoder_exception_fails_only_its_request(predictor, monkeypatch):
    """The last line of defence: even an exception type nobody listed stays that request's 400."""
    import serving.predictor as predictor_module

    real = predictor_module.decode_image
    poison = b"poison"

    def decode(data, size, limits):
        if data == poison:
            raise RuntimeError("a decoder bug")
        return real(data, size, limits)

    monkeypatch.setattr(predictor_module, "decode_image", decode)
    good = encode(random_image(), "PNG")
    out = predictor.predict([{"body": good}, {"body": poison}, {"body": good}])
    assert [r.get("code", 200) for r in out] == [200, 400, 200]
    assert out[0]["batch_size"] == 2 and "RuntimeError" in out[1]["message"]


@pytest.fixture(scope="module")
def make_handler_once(artifacts):
    from serving.ts_handler import CleadHandler
    from tests.serving.conftest import FakeContext

    artifact = artifacts["clead"]
    fake = FakeContext(artifact.parent, artifact.name)
    handler = CleadHandler()
    handler.initialize(fake.context)
    return handler, fake

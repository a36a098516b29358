"""The predictor (and the TorchServe handler around it) without a server: formats, modes, EXIF, limits,
bad input, batching."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from serving.artifact import ArtifactError, load_artifact
from serving.predictor import (
    Limits, Predictor, RequestError, RunOptions, decode_image, is_error, parse_topk, select_device,
)
from tests.serving.conftest import CLASSES, encode, export_tiny, random_image

SIZE = (3, 32, 32)
REPO = Path(__file__).resolve().parents[2]


def code_of(data: bytes, limits: Limits | None = None) -> int:
    with pytest.raises(RequestError) as info:
        decode_image(data, SIZE, limits or Limits())
    return info.value.code


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "GIF"])
def test_every_format_decodes_to_model_input(fmt):
    x = decode_image(encode(random_image(50, 40), fmt), SIZE, Limits())
    assert x.shape == SIZE and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0


def test_input_sized_png_passes_through_losslessly():
    """Adversarial examples are sent as 32x32 PNG: not one pixel may change on the way in."""
    image = random_image(32, 32, seed=3)
    x = decode_image(encode(image, "PNG"), SIZE, Limits())
    expected = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
    assert torch.equal(x, expected)


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16", "1"])
def test_modes_become_rgb(mode):
    image = random_image(40, 40).convert(mode) if mode != "I;16" else Image.fromarray(
        np.full((40, 40), 65535, dtype=np.uint16))
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    x = decode_image(encode(image, fmt), SIZE, Limits())
    assert x.shape == SIZE
    if mode == "I;16":  # full-scale 16-bit white stays white, not clipped garbage
        assert torch.allclose(x, torch.ones(SIZE))


def test_transparent_pixels_become_white():
    image = Image.new("RGBA", (32, 32), (255, 0, 0, 0))
    assert torch.allclose(decode_image(encode(image, "PNG"), SIZE, Limits()), torch.ones(SIZE))
    palette = Image.new("P", (32, 32), 0)
    palette.putpalette([0, 0, 0] * 256)
    palette.info["transparency"] = 0
    assert torch.allclose(decode_image(encode(palette, "PNG", transparency=0), SIZE, Limits()), torch.ones(SIZE))


def test_exif_orientation_is_honoured():
    # Stored 40x20: left half red, right half blue; orientation 6 = "rotate 90 deg clockwise to view".
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    x = decode_image(encode(image, "JPEG", exif=exif, quality=95), (3, 40, 20), Limits())
    assert x[0, :5].mean() > 0.8 and x[2, :5].mean() < 0.2  # top rows red
    assert x[2, -5:].mean() > 0.8 and x[0, -5:].mean() < 0.2  # bottom rows blue


def test_gif_uses_first_frame():
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    x = decode_image(data, SIZE, Limits())
    assert x[0].mean() > 0.9 and x[2].mean() < 0.1


def test_any_size_is_centre_cropped_and_resized():
    # 96x32: three 32x32 squares, green in the middle; the centre crop keeps only green.
    image = Image.new("RGB", (96, 32), (255, 0, 0))
    image.paste((0, 255, 0), (32, 0, 64, 32))
    x = decode_image(encode(image, "PNG"), SIZE, Limits())
    assert x[1].mean() > 0.95 and x[0].mean() < 0.05


def png_with_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` but carries almost no data (a bomb's header)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_bad_inputs_get_specific_status():
    good = encode(random_image(64, 64), "JPEG")
    assert code_of(b"") == 400
    assert code_of(b"this is not an image at all") == 415
    assert code_of(encode(random_image(), "TIFF")) == 415  # a real image, but not an accepted format
    assert code_of(good[: len(good) // 2]) == 400  # truncated JPEG
    png = encode(random_image(64, 64), "PNG")
    assert code_of(png[: len(png) - 40]) == 400  # truncated PNG
    assert code_of(good, Limits(max_bytes=len(good) - 1)) == 413
    assert code_of(good, Limits(max_pixels=64 * 64 - 1)) == 413
    assert code_of(png_with_header(100_000, 100_000)) == 413  # 10 Gpx bomb, refused before decoding
    assert code_of(png_with_header(6000, 5000)) == 413  # over our 25 Mpx default, under Pillow's own


def test_error_messages_say_what_was_wrong():
    with pytest.raises(RequestError, match="over the limit of 100 bytes"):
        decode_image(encode(random_image(), "PNG"), SIZE, Limits(max_bytes=100))
    with pytest.raises(RequestError, match="not a JPEG, PNG, WebP, BMP or GIF"):
        decode_image(b"GIF89", SIZE, Limits())


@pytest.mark.parametrize("value,expected", [(None, 5), ("3", 3), (b"2", 2), (7, 7), ("99", 10), ("", 5)])
def test_topk_parsing_and_bounds(value, expected):
    assert parse_topk(value, 5, 10) == expected


@pytest.mark.parametrize("value", ["zero", "0", "-1", "2.5"])
def test_topk_rejects_nonsense(value):
    with pytest.raises(RequestError) as info:
        parse_topk(value, 5, 10)
    assert info.value.code == 400


def test_handler_answers_each_request_of_a_batch(make_handler):
    handler, fake = make_handler()
    calls = []
    forward = handler.predictor.forward
    handler.predictor.forward = lambda batch: calls.append(len(batch)) or forward(batch)
    batch = [
        {"body": encode(random_image(seed=1), "PNG")},
        {"body": bytearray()},
        {"body": bytearray(b"garbage")},
        {"data": encode(random_image(80, 60, seed=2), "JPEG"), "topk": b"2"},  # multipart field + topk field
        {"body": {"instances": [1, 2]}},  # a JSON body, decoded by TorchServe
    ]
    headers = [{"X-TopK": "3"}, {}, {}, {"x-topk": "9"}, {}]
    out = handler.handle(batch, fake.for_batch(headers))
    bodies = [json.loads(o) for o in out]
    statuses = [fake.context.get_response_status(i)[0] for i in range(len(batch))]
    assert statuses == [200, 400, 415, 200, 415]
    assert calls == [2], "the two good images must share one forward pass"
    assert bodies[0]["batch_size"] == 2 and len(bodies[0]["topk"]) == 3
    assert len(bodies[3]["topk"]) == 2  # the field wins over the header
    assert bodies[0]["model"] == "clead" and bodies[0]["version"] == "2.0"
    assert bodies[0]["label"] == CLASSES[bodies[0]["index"]]
    assert bodies[0]["topk"][bodies[0]["label"]] == bodies[0]["probability"]
    assert list(bodies[0]["topk"].values()) == sorted(bodies[0]["topk"].values(), reverse=True)
    assert all(is_error(b) and b["message"] for b in (bodies[1], bodies[2], bodies[4]))
    assert fake.context.get_response_content_type(0) == "application/json"


def test_form_encoded_body_gets_an_actionable_error(make_handler, png):
    handler, fake = make_handler()
    headers = [{"Content-Type": "application/x-www-form-urlencoded"}, {"Content-Type": "image/png"}]
    out = [json.loads(o) for o in handler.handle([{}, {"body": png}], fake.for_batch(headers))]
    assert out[0]["code"] == 415 and "-H 'Content-Type: application/octet-stream'" in out[0]["message"]
    assert out[1]["batch_size"] == 1


def test_base64_instances_as_kserve_envelope_hands_them_over(png):
    import base64

    from serving.predictor import extract_image

    text = base64.b64encode(png).decode()
    assert extract_image({"data": text}) == png
    assert extract_image({"data": {"b64": text}}) == png
    with pytest.raises(RequestError) as info:
        extract_image({"data": "not base64 at all!"})
    assert info.value.code == 415


def test_envelope_instances_outnumbering_requests(make_handler, png):
    """KServe's envelope passes one request's instances as the batch: no per-request status to index."""
    import base64

    handler, fake = make_handler()
    instances = [{"data": base64.b64encode(png).decode()}, {"data": "bad"}, {"data": {"b64": base64.b64encode(png).decode()}}]
    out = [json.loads(o) for o in handler.handle(instances, fake.for_batch([{}]))]
    assert [o.get("batch_size") for o in out] == [2, None, 2] and out[1]["code"] == 415


def test_handler_matches_direct_model_output(make_handler, artifacts, png):
    handler, fake = make_handler()
    body = json.loads(handler.handle([{"body": png}], fake.for_batch([{}]))[0])
    module, _ = load_artifact(artifacts["clead"])
    x = decode_image(png, SIZE, Limits()).unsqueeze(0)
    with torch.no_grad():
        probs = torch.softmax(module(x), 1)[0]
    assert body["index"] == int(probs.argmax())
    assert body["probability"] == pytest.approx(float(probs.max()), abs=1e-6)


def test_optimized_module_answers_like_the_artifact(artifacts):
    """channels_last + freezing (the CPU default for TorchScript) must not change an answer."""
    requests = [{"body": encode(random_image(40, 30, seed=s), "PNG")} for s in range(5)]
    plain = Predictor.from_artifact(str(artifacts["clead"]), options=RunOptions(optimize=False))
    fast = Predictor.from_artifact(str(artifacts["clead"]))
    assert isinstance(fast.module, torch.jit.ScriptModule) and fast.module is not plain.module
    for a, b in zip(plain.predict(requests), fast.predict(requests)):
        assert a["label"] == b["label"] and a["probability"] == pytest.approx(b["probability"], abs=1e-6)


def test_keep_freed_memory_sets_glibc_thresholds():
    """Process-wide, so in a child process; the TorchServe and Triton server processes call it."""
    import platform

    code = "from serving.predictor import keep_freed_memory; print(keep_freed_memory())"
    out = subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, capture_output=True, text=True)
    assert out.stdout.strip() == str(platform.libc_ver()[0] == "glibc")


def test_handler_reads_limits_from_model_config(make_handler, png):
    handler, fake = make_handler(yaml_config={"handler": {"max_bytes": 10, "default_topk": 1}})
    out = json.loads(handler.handle([{"body": png}], fake.for_batch([{}]))[0])
    assert out["code"] == 413
    assert handler.predictor.limits.default_topk == 1


def test_gpu_id_falls_back_to_cpu_without_cuda(make_handler):
    handler, _ = make_handler(gpu_id=0)
    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert str(handler.predictor.device) == expected
    assert select_device(None).type == "cpu"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("bf16", [False, True])
def test_cuda_path(make_handler, png, bf16):
    handler, fake = make_handler(gpu_id=0, yaml_config={"handler": {"bf16": bf16}})
    body = json.loads(handler.handle([{"body": png}] * 3, fake.for_batch([{}] * 3))[0])
    assert body["device"] == "cuda:0" and body["batch_size"] == 3


def test_tampered_artifact_is_refused(tmp_path, make_handler):
    artifact = export_tiny(tmp_path / "m.pt", 0, "m")
    with artifact.open("r+b") as fh:
        fh.seek(100)
        fh.write(b"\0\1\2\3")
    with pytest.raises(ArtifactError, match="sha256"):
        make_handler(artifact=artifact)


def test_torch_export_artifact_loads(tmp_path, png):
    from training.export import export_artifact
    from training.models import create_model

    torch.manual_seed(0)
    path = export_artifact(create_model("tiny_cnn").eval(), tmp_path / "m.pt2", {"classes": CLASSES})
    out = Predictor.from_artifact(str(path)).predict([{"body": png}])[0]
    assert out["label"] in CLASSES and out["batch_size"] == 1


def test_class_count_mismatch_fails_at_load(tmp_path):
    from training.export import export_artifact
    from training.models import create_model

    path = export_artifact(create_model("tiny_cnn").eval(), tmp_path / "m.pt", {"classes": CLASSES[:5]})
    with pytest.raises(ArtifactError, match="5 classes"):
        Predictor.from_artifact(str(path))

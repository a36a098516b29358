"""Engine-independent request handling: image decoding, batched prediction, response JSON.

TorchServe (``serving/ts_handler.py``) and Triton (``serving/triton.py``) both call
:class:`Predictor`, so the two engines decode, resize, batch and answer identically. Nothing
here imports TorchServe or PyTriton.

Per request the flow is: pick the image bytes out of the request, check the byte limit,
open the image with Pillow restricted to JPEG/PNG/WebP/BMP/GIF, check the pixel limit
*before* decoding (decompression bombs), decode the first frame, honour EXIF orientation,
convert to RGB, centre-crop to the model's aspect ratio and resize to its input size. A
failure in any step becomes a :class:`RequestError` for that request only; the rest of the
batch still runs through one forward pass.
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import io
import json
import logging
import math
import struct
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from serving.artifact import ArtifactError, load_artifact
from serving.errors import error_type
from serving.settings import Limits, RunOptions
from serving.suspicion import SUSPICION_METHOD, SuspicionScorer

__all__ = [
    "IMAGE_FIELDS", "IMAGE_FORMATS", "MALFORMED", "TOPK_ALL", "TOPK_HEADER", "TOPK_PARAM",
    "Limits", "Predictor", "RequestError", "RunOptions",
    "as_bytes", "decode_image", "dumps", "extract_image", "is_error", "keep_freed_memory", "optimize_for_cpu",
    "parse_topk", "select_device", "to_rgb",
]

logger = logging.getLogger(__name__)

# Pillow decoders we accept; anything else (TIFF, PSD, EPS, ...) is refused before decoding.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
# Multipart field names taken as the image, in this order; a raw body arrives as "body".
IMAGE_FIELDS = ("data", "body", "image", "file")
TOPK_PARAM = "topk"  # query parameter / multipart field
TOPK_HEADER = "x-topk"  # request header, case-insensitive
# What Pillow's plugins raise on malformed files, found by fuzzing (tests/serving/test_fuzz.py):
# OSError ("Truncated File Read", "image file is truncated", "broken data stream"), SyntaxError
# (bad headers), ValueError / TypeError (bad tile or mode descriptors), struct.error (short
# header fields), EOFError, IndexError / KeyError (palette and table lookups), ZeroDivisionError.
MALFORMED = (OSError, SyntaxError, ValueError, TypeError, struct.error, EOFError, IndexError, KeyError,
             ZeroDivisionError, AttributeError)
TOPK_ALL = "all"  # topk value asking for every class, plus the full-precision probability vector


class RequestError(Exception):
    """A bad request: answered with ``code`` and a JSON error body, never kills the worker."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def to_json(self, model: str) -> dict[str, Any]:
        return {"code": self.code, "type": error_type(self.code), "message": self.message, "model": model}


def is_error(response: Mapping[str, Any]) -> bool:
    return "code" in response and "message" in response


def as_bytes(value: Any) -> bytes | None:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    return None


def extract_image(request: Mapping[str, Any]) -> bytes:
    """The image bytes of one request: a raw body, or a single multipart file field."""
    for name in IMAGE_FIELDS:
        if name in request:
            value = request[name]
            break
    else:
        candidates = [k for k, v in request.items() if k != TOPK_PARAM and as_bytes(v) is not None]
        if len(candidates) != 1:
            raise RequestError(
                400,
                "send one image as the request body or as one multipart field "
                f"(got fields {sorted(request)})",
            )
        value = request[candidates[0]]
    if isinstance(value, dict) and isinstance(value.get("b64"), str):
        value = value["b64"]  # KServe v1 / TF-serving style {"b64": "..."}
    if isinstance(value, str):
        # KServe's envelope hands over {"instances": [{"data": "<base64>"}]} entries.
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            pass
    if isinstance(value, (dict, list, str)):
        raise RequestError(
            415, "the body is JSON or text; send the image file's bytes (Content-Type: application/octet-stream) "
                 "or, in JSON, the file as a base64 string"
        )
    data = as_bytes(value)
    if data is None:
        raise RequestError(400, f"cannot read an image from a {type(value).__name__} field")
    return data


def parse_topk(value: Any, default: int, num_classes: int) -> int:
    """``k`` from a query parameter or header; clamped to [1, num_classes], must be an integer.

    ``all`` returns ``-1``: every class, and the unrounded probability vector (score-based
    attacks and calibration tools need it; see docs/serving.md)."""
    if value is None or value == b"" or value == "":
        return min(default, num_classes)
    text = value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else str(value)
    if text.strip().lower() == TOPK_ALL:
        return -1
    try:
        k = int(text.strip())
    except ValueError:
        raise RequestError(400, f"topk must be an integer between 1 and {num_classes} or 'all', got {text!r}") from None
    if k < 1:
        raise RequestError(400, f"topk must be at least 1, got {k}")
    return min(k, num_classes)


def decode_image(data: bytes, input_size: Sequence[int], limits: Limits) -> torch.Tensor:
    """Encoded image -> float [0, 1] tensor of shape ``input_size`` (C, H, W), or RequestError."""
    if not data:
        raise RequestError(400, "empty request body; send an image file (JPEG, PNG, WebP, BMP or GIF)")
    if len(data) > limits.max_bytes:
        raise RequestError(413, f"image is {len(data)} bytes, over the limit of {limits.max_bytes} bytes")
    try:
        with warnings.catch_warnings():
            # Pillow warns above its own pixel limit; ours below is stricter and answers with a 413.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as exc:
        raise RequestError(413, f"image refused as a decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        raise RequestError(415, "body is not a JPEG, PNG, WebP, BMP or GIF image") from None
    except MALFORMED as exc:
        # Identified, but its header is cut or corrupt (a JPEG cut inside its header raises
        # OSError "Truncated File Read" here, in Image.open, not at load()).
        raise RequestError(400, f"cannot read the image header: {type(exc).__name__}: {exc}") from None
    width, height = image.size
    if width * height > limits.max_pixels:
        raise RequestError(
            413, f"image is {width}x{height} = {width * height} pixels, over the limit of {limits.max_pixels} pixels"
        )
    if width < 1 or height < 1:
        raise RequestError(400, f"image declares an empty size {width}x{height}")
    try:
        with warnings.catch_warnings():
            # Corrupt EXIF or chunk data only warns; the pixels are what we use.
            warnings.simplefilter("ignore")
            image.seek(0)  # GIF / animated WebP: the first frame
            image.load()
            image = ImageOps.exif_transpose(image)
            rgb = to_rgb(image)
            channels, out_h, out_w = input_size
            if rgb.size != (out_w, out_h):
                # Keep the aspect ratio: crop the centre to the model's shape, then downscale with an
                # antialiased filter (torchvision's Resize + CenterCrop, in one Pillow call).
                rgb = ImageOps.fit(rgb, (out_w, out_h), method=Image.Resampling.BICUBIC)
    except MALFORMED as exc:
        # Truncated or corrupt pixel data, broken EXIF, an impossible mode: this request's fault.
        raise RequestError(400, f"cannot decode the {image.format} image: {type(exc).__name__}: {exc}") from None
    array = np.asarray(rgb, dtype=np.uint8)
    if channels == 1:
        array = array.mean(axis=2, keepdims=True).astype(np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB; transparent pixels are composited onto white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit / float grey: scale to 8 bits instead of letting convert() clip at 255.
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / top * 255.0, 0, 255).astype(np.uint8), "L")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")  # L, P, CMYK, YCbCr, 1, ...


def keep_freed_memory() -> bool:
    """Stop glibc from handing freed tensor memory back to the kernel after every batch.

    Why: a forward pass allocates and frees its activations (0.5 MB each for a batch of 8 of
    the quarter-width model). glibc trims the top of its heap back to the kernel whenever more
    than its trim threshold is free there, so the next batch takes those pages again as
    zero-filled page faults: measured 1,200-1,600 minor faults per forward of 8 images, 6.7-7.3
    ms instead of 4.5 ms. Whether a process hits this depends on its malloc history (one that
    had imported torchvision, as TorchServe's stock handler does, took 0-640 faults in the same
    test), so a server must not leave it to chance. Fixed thresholds (blocks mmapped only above
    64 MB, the heap trimmed only above 256 MB free) keep the pages: no faults. Process-wide, so
    only the engines' own server processes call it. Returns False where libc is not glibc.
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(mallopt(m_mmap_threshold, 64 << 20)) and bool(mallopt(m_trim_threshold, 256 << 20))


def optimize_for_cpu(module: torch.nn.Module, device: torch.device) -> tuple[torch.nn.Module, torch.memory_format]:
    """A TorchScript ``module`` on CPU, made faster to run: ``(module, input memory format)``.

    Measured on the quarter-width PreAct ResNet-18, batch 1 / 4 / 8, 2-core CPU (full width):
    channels_last (NHWC) weights and inputs run oneDNN's convolutions without layout
    reorders, 1.44 -> 1.27, 3.0 -> 2.45, 4.8 -> 4.0 ms (12.8 -> 11.6 ms at batch 1); freezing
    inlines the weights and folds batch norm into the convolutions, another 4-8%.
    ``torch.jit.optimize_for_inference`` on top was 3% faster at batch 8 but 10% slower at
    batch 1, the batch of every lone request, so it is not used. CUDA keeps the module as
    loaded (bf16 autocast runs on it), and a torch.export module has no freezing step. The
    result is not differentiable, which serving never needs.
    """
    if device.type != "cpu" or not isinstance(module, torch.jit.ScriptModule):
        return module, torch.contiguous_format
    # Freezing keeps only forward unless told otherwise; the suspicion method must survive it.
    keep = [SUSPICION_METHOD] if hasattr(module, SUSPICION_METHOD) else None
    with warnings.catch_warnings():
        # torch >= 2.10 flags torch.jit as deprecated (see serving/artifact.py).
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.freeze(module.eval().to(memory_format=torch.channels_last), preserved_attrs=keep)
    return module, torch.channels_last


def select_device(gpu_id: int | None) -> torch.device:
    """``cuda:<gpu_id>`` when the engine assigned a GPU and CUDA works, otherwise CPU."""
    if gpu_id is not None and torch.cuda.is_available():
        return torch.device(f"cuda:{int(gpu_id)}")
    return torch.device("cpu")


class Predictor:
    """One loaded model: turns a list of raw requests into a list of JSON-able responses."""

    def __init__(
        self,
        module: torch.nn.Module,
        metadata: Mapping[str, Any],
        device: torch.device | str = "cpu",
        name: str | None = None,
        version: str | None = None,
        limits: Limits | None = None,
        options: RunOptions | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.limits = limits or Limits()
        self.options = options or RunOptions()
        self.module, self.memory_format = (
            optimize_for_cpu(module, self.device) if self.options.optimize else (module, torch.contiguous_format)
        )
        self.metadata = dict(metadata)
        self.classes = [str(c) for c in metadata["classes"]]
        self.input_size = tuple(int(s) for s in metadata["input_size"])
        self.name = name or str(metadata.get("name") or "model")
        self.version = str(version or metadata.get("version") or "1")
        # Artifacts augmented by training/suspicion.py also score every image (serving/suspicion.py).
        self.suspicion = SuspicionScorer.from_artifact(self.module, self.metadata)
        self._check_output()

    @classmethod
    def from_artifact(
        cls, artifact: str, gpu_id: int | None = None, name: str | None = None,
        version: str | None = None, limits: Limits | None = None, options: RunOptions | None = None,
    ) -> "Predictor":
        device = select_device(gpu_id)
        module, meta = load_artifact(artifact, device=device)
        return cls(module, meta, device, name=name, version=version, limits=limits, options=options)

    def _check_output(self) -> None:
        """Warm-up pass: catches a class-count mismatch at load time, not at the first request."""
        logits = self.forward(torch.zeros(1, *self.input_size))
        if logits.shape != (1, len(self.classes)):
            raise ArtifactError(
                f"model returns logits of shape {tuple(logits.shape)} for one image, "
                f"but the metadata lists {len(self.classes)} classes"
            )

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """One forward pass, no autograd; bf16 autocast only on CUDA and only when enabled."""
        batch = batch.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        use_bf16 = self.options.bf16 and self.device.type == "cuda"
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
            logits = self.module(batch)
        return logits.float().cpu()

    def forward_scored(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits, suspicion per image or None when the artifact has no suspicion method)."""
        if self.suspicion is None:
            return self.forward(batch), None
        batch = batch.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        # Always fp32, bf16 or not: the threshold was calibrated on fp32 embeddings, and bf16 ones
        # would shift every score (the flag rate on clean images would no longer be the documented one).
        with torch.inference_mode():
            logits, scores = self.suspicion(batch)
        return logits.float().cpu(), scores.float().cpu()

    def predict(
        self,
        requests: Sequence[Mapping[str, Any]],
        topk_values: Sequence[Any] | None = None,
        rejected: Sequence[RequestError | None] | None = None,
    ) -> list[dict]:
        """Answer every request: a prediction dict, or an error dict (see :func:`is_error`).

        ``rejected`` carries errors the engine found before us (e.g. a mangled form body).
        """
        topk_values = topk_values if topk_values is not None else [None] * len(requests)
        rejected = rejected if rejected is not None else [None] * len(requests)
        responses: list[dict | None] = [None] * len(requests)
        tensors, ks, slots = [], [], []
        for i, (request, topk) in enumerate(zip(requests, topk_values)):
            try:
                if rejected[i] is not None:
                    raise rejected[i]
                k = parse_topk(topk, self.limits.default_topk, len(self.classes))
                tensors.append(decode_image(extract_image(request), self.input_size, self.limits))
                ks.append(k)
                slots.append(i)
            except RequestError as err:
                responses[i] = err.to_json(self.name)
            except Exception as exc:  # noqa: BLE001 - one request's failure must not fail its batch
                # A decoder failure nobody foresaw: still this request's alone (its batch-mates
                # are answered), logged with the traceback so it can be classified above.
                logger.exception("request %d of a batch of %d failed to decode", i, len(requests))
                responses[i] = RequestError(400, f"cannot decode the image: {type(exc).__name__}: {exc}").to_json(
                    self.name)
        if tensors:
            logits, scores = self.forward_scored(torch.stack(tensors))
            probs = torch.softmax(logits, dim=1)
            for j, (slot, k, row) in enumerate(zip(slots, ks, probs)):
                responses[slot] = self.format(row, k, batch_size=len(tensors))
                if scores is not None:
                    responses[slot].update(self.suspicion.describe(float(scores[j])))
        return responses  # type: ignore[return-value]

    def format(self, probs: torch.Tensor, k: int, batch_size: int) -> dict[str, Any]:
        every = k < 0  # topk=all
        values, indices = probs.topk(len(self.classes) if every else k)
        top = {self.classes[i]: round(float(v), 6) for v, i in zip(values.tolist(), indices.tolist())}
        index = int(indices[0])
        prob = float(values[0])
        if not math.isfinite(prob):
            raise FloatingPointError(f"{self.name}: the model produced non-finite probabilities")
        return {
            "model": self.name,
            "version": self.version,
            "label": self.classes[index],
            "index": index,
            "probability": round(prob, 6),
            "topk": top,
            "batch_size": batch_size,  # how many images shared this forward pass
            "device": str(self.device),
            # Unrounded (float32 as JSON), class order of the metadata: only with topk=all.
            **({"probabilities": [float(p) for p in probs.tolist()]} if every else {}),
        }


def dumps(response: Mapping[str, Any]) -> str:
    return json.dumps(response)

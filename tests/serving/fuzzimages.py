"""Hostile images for the decode-path fuzz tests: valid seeds in odd modes, and hypothesis
strategies that break them (truncation, bit flips, splices, huge declared dimensions).

Shared by the in-process property test (``test_fuzz.py``), the real-server fuzz test and the
reliability report (``benchmarks/reliability.py``), so all three throw the same kind of input.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from hypothesis import strategies as st
from PIL import Image


def _save(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def seed_images() -> dict[str, bytes]:
    """Valid files of every accepted format, in the modes that take unusual decoder paths."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8), "RGB")
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.fromarray(rng.integers(0, 256, (24, 40), dtype=np.uint8), "L"))
    grey16 = Image.fromarray(rng.integers(0, 65536, (20, 20), dtype=np.uint16))  # mode I;16
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 3
    frames = [Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), "RGB") for _ in range(3)]
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate
    return {
        "png_rgb": _save(rgb, "PNG"),
        "png_rgba": _save(rgba, "PNG"),
        "png_16bit": _save(grey16, "PNG"),
        "png_palette_transparent": _save(palette, "PNG", transparency=3),
        "png_la": _save(rgba.convert("LA"), "PNG"),
        "png_1bit": _save(rgb.convert("1"), "PNG"),
        "jpeg_rgb": _save(rgb, "JPEG", quality=80),
        "jpeg_exif": _save(rgb, "JPEG", exif=exif.tobytes()),
        "jpeg_progressive": _save(rgb, "JPEG", progressive=True),
        "jpeg_cmyk": _save(rgb.convert("CMYK"), "JPEG"),
        "jpeg_grey": _save(rgb.convert("L"), "JPEG"),
        "gif_animated": _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0),
        "gif_transparent": _save(palette, "GIF", transparency=3),
        "webp_lossy": _save(rgb, "WEBP", quality=70),
        "webp_lossless_alpha": _save(rgba, "WEBP", lossless=True),
        "webp_animated": _save(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=50),
        "bmp_rgb": _save(rgb, "BMP"),
        "bmp_1bit": _save(rgb.convert("1"), "BMP"),
        "bmp_palette": _save(palette.convert("RGB").convert("P"), "BMP"),
    }


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def huge_declared(kind: str, width: int, height: int) -> bytes:
    """A small file whose header declares ``width`` x ``height`` (a decompression bomb's shape)."""
    if kind == "png":
        ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
        return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) \
            + png_chunk(b"IEND", b"")
    if kind == "gif":
        return b"GIF89a" + struct.pack("<HHBBB", width & 0xFFFF, height & 0xFFFF, 0, 0, 0) \
            + b",\0\0\0\0" + struct.pack("<HH", width & 0xFFFF, height & 0xFFFF) + b"\0\x02\x02D\x01\0;"
    if kind == "bmp":
        info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
        return b"BM" + struct.pack("<IHHI", 54 + 64, 0, 0, 54) + info + b"\0" * 64
    if kind == "jpeg":
        jpeg = bytearray(_save(Image.new("RGB", (8, 8)), "JPEG"))
        sof = jpeg.find(b"\xff\xc0")
        jpeg[sof + 5:sof + 9] = struct.pack(">HH", height & 0xFFFF, width & 0xFFFF)
        return bytes(jpeg)
    raise ValueError(kind)


SEEDS = seed_images()
HUGE_KINDS = ("png", "gif", "bmp", "jpeg")


@st.composite
def truncated(draw) -> bytes:
    data = SEEDS[draw(st.sampled_from(sorted(SEEDS)))]
    return data[: draw(st.integers(0, len(data) - 1))]


@st.composite
def bit_flipped(draw) -> bytes:
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    # Headers hold most of the interesting fields: bias half the flips into the first 64 bytes.
    for _ in range(draw(st.integers(1, 8))):
        limit = min(64, len(data)) if draw(st.booleans()) else len(data)
        pos = draw(st.integers(0, limit - 1))
        data[pos] ^= 1 << draw(st.integers(0, 7))
    return bytes(data)


@st.composite
def spliced(draw) -> bytes:
    """One file's header onto another's body, or a chunk of random bytes inside a file."""
    names = sorted(SEEDS)
    head, tail = SEEDS[draw(st.sampled_from(names))], SEEDS[draw(st.sampled_from(names))]
    cut_a = draw(st.integers(1, len(head)))
    cut_b = draw(st.integers(0, len(tail) - 1))
    middle = draw(st.binary(max_size=32))
    return head[:cut_a] + middle + tail[cut_b:]


@st.composite
def huge(draw) -> bytes:
    return huge_declared(draw(st.sampled_from(HUGE_KINDS)), draw(st.integers(1, 2**31 - 1)),
                         draw(st.integers(1, 2**31 - 1)))


def hostile_images() -> st.SearchStrategy[bytes]:
    """Everything above, plus plain random bytes and the valid seeds themselves."""
    return st.one_of(st.binary(max_size=2048), truncated(), bit_flipped(), spliced(), huge(),
                     st.sampled_from(sorted(SEEDS)).map(SEEDS.__getitem__))

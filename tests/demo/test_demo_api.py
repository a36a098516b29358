"""The demo through its public API, with ``gradio_client``, against ``python -m demo.app``."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.server

EPS_K = 8
ROLES = ("baseline", "hardened")
PANEL = ("clean_img", "adv_img", "delta_img", "sizes", "clean_top5", "adv_top5")


@pytest.fixture(scope="module")
def client(demo_url):
    from gradio_client import Client

    return Client(demo_url, verbose=False)


def attack(client, image: Path, *args):
    from gradio_client import handle_file

    out = client.predict(handle_file(str(image)), *args, api_name="/attack")
    verdict, rest = out[0], out[1:]
    return verdict, {role: dict(zip(PANEL, rest[i * 6:(i + 1) * 6])) for i, role in enumerate(ROLES)}


def pixels(path: str) -> np.ndarray:
    """The 32x32 image behind a nearest-neighbour upscaled PNG."""
    img = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
    factor = img.shape[0] // 32
    return img[::factor, ::factor]


def test_named_endpoint_is_documented(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert "/attack" in endpoints
    names = [p["parameter_name"] for p in endpoints["/attack"]["parameters"]]
    assert names == ["path", "attack", "eps_k", "steps", "target"]


@pytest.mark.parametrize("target", ["each", "baseline"])
def test_attack_answers_for_both_models_within_eps(client, photo, target):
    verdict, panels = attack(client, photo, "PGD", EPS_K, 10, target)
    assert "baseline" in verdict and "hardened" in verdict and f"eps {EPS_K}/255" in verdict
    for role, panel in panels.items():
        for key in ("clean_top5", "adv_top5"):
            confidences = panel[key]["confidences"]
            assert len(confidences) == 5 and panel[key]["label"] == confidences[0]["label"]
        clean, adv = pixels(panel["clean_img"]), pixels(panel["adv_img"])
        assert clean.shape == adv.shape == (32, 32, 3)
        assert np.abs(adv - clean).max() <= EPS_K  # in 8-bit pixel units
        shown_linf = re.search(r"L-inf \*\*(\d+)/255\*\*", panel["sizes"])
        assert shown_linf and int(shown_linf.group(1)) == np.abs(adv - clean).max()
        expected = role if target == "each" else target
        assert f"against **{expected}**" in panel["sizes"]


def test_bad_uploads_are_readable_errors(client, not_an_image, too_many_pixels):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="not an image"):
        attack(client, not_an_image, "PGD", EPS_K, 10, "each")
    with pytest.raises(AppError, match="pixels, over the limit"):
        attack(client, too_many_pixels, "FGSM", EPS_K, 1, "each")


def test_preview_shows_the_resized_upload(client, photo):
    from gradio_client import handle_file

    preview = client.predict(handle_file(str(photo)), api_name="/preview")
    assert pixels(preview).shape == (32, 32, 3)


def test_missing_models_fail_at_start_with_the_flags(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "demo.app", "--baseline", str(tmp_path / "b.pt"), "--hardened", str(tmp_path / "h.pt")],
        capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode != 0
    assert "b.pt" in proc.stderr and "h.pt" in proc.stderr and "--baseline" in proc.stderr
    assert "Traceback" not in proc.stderr

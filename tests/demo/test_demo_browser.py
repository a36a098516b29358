"""The demo in a real browser: Debian's chromium driven by Playwright (no ``playwright install``)."""

from __future__ import annotations

import os
import re

import pytest
from PIL import Image

from demo.gallery import default_data_dir
from demo.screenshot import CHROMIUM, screenshot

pytestmark = [pytest.mark.browser, pytest.mark.server]


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no chromium at {CHROMIUM} (make system-deps installs it)")
def test_upload_attack_and_see_both_models(demo_url, photo, tmp_path):
    out = tmp_path / "demo.png"
    gallery = default_data_dir().is_dir()  # the gallery is hidden without the CIFAR-10 tarball
    shown, outside = screenshot(demo_url, photo, out, attack="PGD", eps_k=8, gallery_label="cat" if gallery else None)
    if gallery:
        assert "cat_" in shown["gallery"]
    assert "PGD-10, eps 8/255" in shown["verdict"]
    for role in ("baseline", "hardened"):
        assert role in shown["verdict"]
        assert "%" in shown[role]  # the adversarial top-5 with its confidence bars
        linf = re.search(r"L-inf (\d+)/255", shown[f"{role}-sizes"])
        assert linf and 0 < int(linf.group(1)) <= 8, shown[f"{role}-sizes"]
    assert outside == [], f"the page called hosts other than 127.0.0.1: {outside}"
    with Image.open(out) as img:
        assert img.format == "PNG" and img.width >= 1000 and img.height >= 800

"""Drive the running demo in a real Chromium and save a screenshot (docs/demo.png).

Shared by the browser test and by ``python -m demo.screenshot --out docs/demo.png``, so the
README's picture is what the test saw. Uses Debian's ``chromium`` (never
``playwright install``) with the flags that keep it from calling any host but 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

from demo.app import OFFLINE_ENV, SHIPPED
from demo.gallery import default_data_dir, load_samples

CHROMIUM = os.environ.get("CLEAD_CHROMIUM", "/usr/bin/chromium")
# Without the background-networking flags Chromium contacts update and sync hosts.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
LOCAL_HOSTS = {"127.0.0.1", "localhost"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(baseline: Path, hardened: Path, port: int, data: Optional[Path] = None,
              extra: tuple[str, ...] = (), timeout: float = 90.0) -> subprocess.Popen:
    """Start ``python -m demo.app`` and return once it answers on 127.0.0.1:port."""
    cmd = [sys.executable, "-m", "demo.app", "--baseline", str(baseline), "--hardened", str(hardened),
           "--port", str(port), *(["--data", str(data)] if data else []), *extra]
    env = {**os.environ, **OFFLINE_ENV}
    # A file, not a pipe: a pipe nobody reads would block the app once it fills.
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[1], env=env,
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    proc.log = log  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"demo exited with {proc.returncode}:\n{app_output(proc)}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                if response.status == 200:
                    return proc
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    stop_app(proc)
    raise TimeoutError(f"demo did not answer on port {port} within {timeout:.0f} s")


def stop_process(proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """SIGTERM ``proc`` if it still runs, then SIGKILL it if it has not exited within ``timeout_s``."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def stop_app(proc: subprocess.Popen) -> str:
    """Stop the app process; returns what it printed."""
    stop_process(proc)
    return app_output(proc)


def app_output(proc: subprocess.Popen) -> str:
    log = proc.log  # type: ignore[attr-defined]
    log.seek(0)
    return log.read()


def launch_browser(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)


# e.g. "baseline fooled: cat -> frog; hardened (clead) holds: cat"
VERDICT = re.compile(r"baseline.*(fooled|holds).*; hardened.*(fooled|holds)")


def pick_from_gallery(page, label: str, timeout_ms: int = 30_000) -> str:
    """Click a gallery thumbnail; returns the upload box's text once it holds that sample."""
    from playwright.sync_api import expect

    page.locator("#gallery").get_by_text(label, exact=True).click()
    expect(page.locator("#upload")).to_contain_text(re.compile(rf"{label}_\d+"), timeout=timeout_ms)
    page.locator("#preview img").wait_for(state="visible", timeout=timeout_ms)
    return page.locator("#upload").inner_text()


def attack_in_browser(page, image: Path, attack: str = "PGD", eps_k: int = 8,
                      timeout_ms: int = 60_000) -> dict[str, str]:
    """On the loaded page, upload ``image``, choose the attack and eps, press Attack and wait
    for both models' results. Returns the visible verdict and each model's texts."""
    from playwright.sync_api import expect

    clear = page.locator("#upload").get_by_role("button", name="Clear")
    if clear.count():  # a gallery pick fills the upload box; empty it to upload
        clear.click()
    page.locator("#upload input[type=file]").set_input_files(str(image))
    expect(page.locator("#upload")).to_contain_text(image.stem, timeout=timeout_ms)
    page.locator("#preview img").wait_for(state="visible", timeout=timeout_ms)
    page.locator("#attack input").click()
    page.get_by_role("option", name=attack, exact=True).click()
    eps_box = page.locator("#eps input[type=number]")
    eps_box.fill(str(eps_k))
    eps_box.press("Enter")
    page.locator("#eps-shown").get_by_text(f"{eps_k}/255").wait_for(timeout=timeout_ms)
    page.locator("#run").click()
    verdict = page.locator("#verdict")
    # The progress text also names the models, so wait for the verdict's own wording.
    expect(verdict).to_contain_text(VERDICT, timeout=timeout_ms)
    expect(verdict.locator(".progress-text, .eta-bar")).to_have_count(0, timeout=timeout_ms)
    shown = {"verdict": verdict.inner_text()}
    for role in ("baseline", "hardened"):
        page.locator(f"#{role}-adv-img img").wait_for(state="visible", timeout=timeout_ms)
        shown[role] = page.locator(f"#{role}-adv").inner_text()
        shown[f"{role}-sizes"] = page.locator(f"#{role}-sizes").inner_text()
    return shown


def screenshot(url: str, image: Path, out: Path, attack: str = "PGD", eps_k: int = 8,
               gallery_label: Optional[str] = None) -> tuple[dict, list[str]]:
    """Run one attack in Chromium, save a full-page PNG; returns (what was shown, non-local
    requests). With ``gallery_label``, first picks that gallery sample (``shown["gallery"]``)."""
    from playwright.sync_api import sync_playwright

    outside: list[str] = []
    with sync_playwright() as p:
        browser = launch_browser(p)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.on("request", lambda r: _note_outside(r.url, outside))
            page.goto(url, wait_until="networkidle", timeout=60_000)
            picked = pick_from_gallery(page, gallery_label) if gallery_label else ""
            shown = {**attack_in_browser(page, image, attack, eps_k), "gallery": picked}
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=True)
        finally:
            browser.close()
    return shown, outside


def _note_outside(url: str, outside: list[str]) -> None:
    parsed = urlparse(url)
    if parsed.scheme in ("http", "https", "ws", "wss") and parsed.hostname not in LOCAL_HOSTS:
        outside.append(url)


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description="Regenerate the README screenshot of the demo.")
    p.add_argument("--baseline", type=Path, default=SHIPPED["baseline"])
    p.add_argument("--hardened", type=Path, default=SHIPPED["hardened"])
    p.add_argument("--image", type=Path, default=None, help="image to upload (default: a CIFAR-10 test cat)")
    p.add_argument("--data", type=Path, default=None, help="CIFAR-10 folder, as for clead-demo")
    p.add_argument("--out", type=Path, default=Path("docs/demo.png"))
    args = p.parse_args(argv)
    image = args.image
    if image is None:
        samples = load_samples(args.data or default_data_dir())
        image = next((s.path for s in samples if s.label == "cat"), samples[0].path)
    port = free_port()
    proc = start_app(args.baseline, args.hardened, port, args.data)
    try:
        shown, outside = screenshot(f"http://127.0.0.1:{port}/", image, args.out)
    finally:
        stop_app(proc)
    print(shown["verdict"])
    if outside:
        sys.exit(f"the page requested hosts other than 127.0.0.1: {outside}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

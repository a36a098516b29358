"""``--server`` mode: predictions over HTTP from a TorchServe-shaped endpoint.

The endpoint here is a few lines of ``http.server`` that answer like the serving handler
(``{"topk": {label: probability}}``) from the same artifacts, so the test checks that the
PNG round trip preserves the adversarial image exactly: remote and local top-k must agree.
The ``server`` tests then run the same against a real ``clead-serve up`` with token
authorization on (missing, wrong, renewed keys; the demo's own start-up check).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import requests
import torch
from PIL import Image

from demo import lab
from demo.remote import RemoteError, RemotePredictor, parse_topk
from demo.screenshot import stop_process


@pytest.fixture(scope="module")
def models(artifacts):
    return lab.load_models(artifacts["baseline"], artifacts["hardened"])


@pytest.fixture(scope="module")
def server(models):
    by_name = {m.meta["name"]: m for m in models.values()}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            name = self.path.rsplit("/", 1)[-1]
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if name not in by_name:
                return self._send(404, {"code": 404, "message": f"model {name} not found"})
            pixels = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"), dtype=np.float32) / 255
            x = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0)
            k = int(self.headers.get("X-TopK", 5))
            self._send(200, {"topk": dict(lab.local_topk(by_name[name], x, k))})

        def _send(self, status, obj):
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def test_remote_predictions_match_local(models, server, photo):
    x = lab.load_upload(photo, models["baseline"].input_size)
    local = lab.run_lab(models, x, "PGD", 8 / 255, 5, "each")
    remote = lab.run_lab(models, x, "PGD", 8 / 255, 5, "each", predict=RemotePredictor(server))
    for role in lab.ROLES:
        for key in ("clean", "adversarial"):
            ours, theirs = getattr(local.outcomes[role], key), getattr(remote.outcomes[role], key)
            assert [label for label, _ in ours] == [label for label, _ in theirs]
            assert np.allclose([p for _, p in ours], [p for _, p in theirs], atol=1e-5)


def test_unknown_server_model_is_a_readable_error(models, server):
    predictor = RemotePredictor(server, names={"baseline": "no-such-model"})
    with pytest.raises(RemoteError, match="no-such-model.*404"):
        predictor(models["baseline"], torch.rand(1, 3, 32, 32))


def test_unreachable_server_is_a_readable_error(models):
    from demo.screenshot import free_port

    predictor = RemotePredictor(f"http://127.0.0.1:{free_port()}", timeout=2)
    with pytest.raises(RemoteError, match="could not reach"):
        predictor(models["baseline"], torch.rand(1, 3, 32, 32))


def test_parse_topk_sorts_and_rejects_other_shapes():
    assert parse_topk({"topk": {"cat": 0.2, "dog": 0.7}}) == [("dog", 0.7), ("cat", 0.2)]
    with pytest.raises(RemoteError, match="topk"):
        parse_topk({"predictions": []})


# -- against a real `clead-serve up`, token authorization on (as `make serve` runs it) -----------
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def torchserve(artifacts, tmp_path_factory):
    """``clead-serve up --detach`` serving the demo's two artifacts; ``clead-serve stop`` at the end."""
    from serving.torchserve import free_port

    workdir = tmp_path_factory.mktemp("serve")
    ports = {flag: free_port() for flag in ("--inference-port", "--management-port", "--metrics-port",
                                            "--grpc-inference-port", "--grpc-management-port")}
    cmd = [sys.executable, "-m", "serving.cli", "up", "--detach", "--workdir", str(workdir), "--timeout", "200",
           "--model", f"baseline={artifacts['baseline']}", "--model", f"clead={artifacts['hardened']}",
           *[str(v) for flag, port in ports.items() for v in (flag, port)]]
    try:
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout + out.stderr
        yield SimpleNamespace(url=f"http://127.0.0.1:{ports['--inference-port']}", workdir=workdir,
                              key_file=workdir / "key_file.json",
                              management=f"http://127.0.0.1:{ports['--management-port']}")
    finally:
        subprocess.run([sys.executable, "-m", "serving.cli", "stop", "--workdir", str(workdir)], cwd=REPO,
                       capture_output=True, timeout=120)


def inference_key(key_file: Path) -> str:
    return json.loads(key_file.read_text())["inference"]["key"]


@pytest.mark.server
@pytest.mark.slow
def test_against_clead_serve_with_token_auth(models, torchserve, photo):
    """The key file of the server is read and sent: remote and local top-k agree, attack included."""
    x = lab.load_upload(photo, models["baseline"].input_size)
    predictor = RemotePredictor(torchserve.url, key_file=torchserve.key_file)
    predictor.check(models)
    local = lab.run_lab(models, x, "FGSM", 8 / 255, 1, "each")
    remote = lab.run_lab(models, x, "FGSM", 8 / 255, 1, "each", predict=predictor)
    for role in lab.ROLES:
        for key in ("clean", "adversarial"):
            ours, theirs = getattr(local.outcomes[role], key), getattr(remote.outcomes[role], key)
            assert [label for label, _ in ours] == [label for label, _ in theirs]
            assert np.allclose([p for _, p in ours], [p for _, p in theirs], atol=1e-5)


@pytest.mark.server
@pytest.mark.slow
def test_missing_or_wrong_key_is_a_clear_message(models, torchserve, tmp_path):
    x = torch.rand(1, 3, 32, 32)
    absent = tmp_path / "nowhere" / "key_file.json"
    with pytest.raises(RemoteError, match=r"refused no key \(.*nowhere.*does not exist\).*missing, wrong or expired"):
        RemotePredictor(torchserve.url, key_file=absent)(models["baseline"], x)
    with pytest.raises(RemoteError, match="refused the key given with --key.*--key-file"):
        RemotePredictor(torchserve.url, key="not-the-key", key_file=torchserve.key_file)(models["hardened"], x)
    broken = tmp_path / "key_file.json"
    broken.write_text('{"inference": ')
    with pytest.raises(RemoteError, match="cannot read the inference key"):
        RemotePredictor(torchserve.url, key_file=broken)(models["baseline"], x)


@pytest.mark.server
@pytest.mark.slow
def test_renewed_key_is_picked_up_and_the_old_one_refused(models, torchserve):
    """After the token API renews the inference key, a key given by value is stale (as an expired one
    is: TorchServe answers both alike), while the key file, reread per request, keeps working."""
    x = torch.rand(1, 3, 32, 32)
    old = inference_key(torchserve.key_file)
    by_value = RemotePredictor(torchserve.url, key=old, key_file=None)
    by_file = RemotePredictor(torchserve.url, key_file=torchserve.key_file)
    assert by_value(models["baseline"], x) == by_file(models["baseline"], x)
    api_key = json.loads(torchserve.key_file.read_text())["API"]["key"]
    resp = requests.post(f"{torchserve.management}/token?type=inference",
                         headers={"Authorization": f"Bearer {api_key}"}, timeout=30)
    assert resp.status_code == 200, resp.text
    assert inference_key(torchserve.key_file) != old
    with pytest.raises(RemoteError, match="missing, wrong or expired"):
        by_value(models["baseline"], x)
    top = by_file(models["baseline"], x)
    assert len(top) == lab.TOP_K and top[0][0] in models["baseline"].meta["classes"]


@pytest.mark.server
@pytest.mark.slow
def test_demo_cli_reads_the_key_file_and_warns_on_a_wrong_key(artifacts, torchserve):
    """``python -m demo.app --server URL --key-file F``: the start-up check passes with the server's
    key file and names the problem with a wrong key (the app is stopped right after the check)."""
    from demo.screenshot import free_port

    base = [sys.executable, "-m", "demo.app", "--baseline", str(artifacts["baseline"]),
            "--hardened", str(artifacts["hardened"]), "--server", torchserve.url, "--port", str(free_port())]
    for extra, expected in ((["--key-file", str(torchserve.key_file)], "answers for both models"),
                            (["--key", "wrong"], "refused the key given with --key")):
        line = first_stderr_line_with(base + extra, ("answers for both models", "warning:"))
        assert expected in line, line


def first_stderr_line_with(cmd: list[str], needles: tuple[str, ...], timeout_s: float = 180) -> str:
    """Start ``cmd``, return its first stderr line holding one of ``needles``, then stop it."""
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    seen: list[str] = []
    found = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            seen.append(line)
            if any(n in line for n in needles):
                found.set()
                return

    threading.Thread(target=read, daemon=True).start()
    try:
        assert found.wait(timeout_s), "".join(seen[-30:])
        return next(line for line in seen if any(n in line for n in needles))
    finally:
        stop_process(proc, timeout_s=30)


def test_stop_process_terminates_then_kills():
    import signal

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    stop_process(sleeper)
    assert sleeper.returncode == -signal.SIGTERM
    stubborn = subprocess.Popen([sys.executable, "-c", "import signal, sys, time\n"
                                 "signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True)\n"
                                 "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    assert stubborn.stdout.readline() == "ready\n"  # SIGTERM is ignored from here on
    stop_process(stubborn, timeout_s=0.5)
    assert stubborn.returncode == -signal.SIGKILL
    stubborn.stdout.close()
    stop_process(stubborn)  # already gone: nothing to do

"""``--server`` mode: predictions over HTTP from a TorchServe-shaped endpoint.

The endpoint here is a few lines of ``http.server`` that answer like the serving handler
(``{"topk": {label: probability}}``) from the same artifacts, so the test checks that the
PNG round trip preserves the adversarial image exactly: remote and local top-k must agree.
"""

from __future__ import annotations

import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from PIL import Image

from demo import lab
from demo.remote import RemoteError, RemotePredictor, parse_topk


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
    x = lab.to_model_input(lab.load_image(photo), models["baseline"].input_size)
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

"""``serving.front`` against a stand-in upstream, in this process: what it relabels, what it
refuses, and that everything else (headers, statuses, bodies, keep-alive) passes unchanged.

The upstream records what reached it and answers as told by the path, so each test can see
both sides of the hop. The real TorchServe behind the front is in ``test_servers.py``.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from serving.front import FrontConfig, FrontServer, sniff_image
from serving.torchserve import free_port
from tests.serving.conftest import encode, random_image

LIMIT = 1_000_000  # the front's max_request_bytes in these tests
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


class Upstream(BaseHTTPRequestHandler):
    """Echoes what it got as JSON; ``/status/N`` answers N, ``/chunked`` answers chunked."""

    protocol_version = "HTTP/1.1"
    seen: list[dict] = []

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(length)
        record = {"method": self.command, "path": self.path, "headers": self.headers.items(), "length": length,
                  "sha": hashlib.sha256(body).hexdigest(), "peer": self.client_address[1]}
        self.seen.append(record)
        payload = json.dumps(record).encode()
        status = int(self.path.rsplit("/", 1)[-1]) if self.path.startswith("/status/") else 200
        self.send_response_only(status, "Custom Reason" if status == 418 else None)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Request-Id", "abc")
        self.send_header("Set-Cookie", "a=1")
        self.send_header("Set-Cookie", "b=2")
        if self.path == "/chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (payload[:10], payload[10:]):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
            return
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_PUT = do_GET = do_POST


def serve(server) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def upstream():
    Upstream.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    server.daemon_threads = True
    serve(server)
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def front(upstream):
    config = FrontConfig(port=0, upstream=f"http://127.0.0.1:{upstream.server_address[1]}",
                         max_request_bytes=LIMIT, upstream_timeout_s=10, idle_timeout_s=10)
    server = FrontServer(config)
    serve(server)
    yield server
    server.shutdown()
    server.server_close()


def post(front, path: str, body: bytes, headers: dict | None = None, method: str = "POST"):
    return requests.request(method, front.url + path, data=body, headers=headers or {}, timeout=10)


def jpeg() -> bytes:
    return encode(random_image(40, 30), "JPEG")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "GIF"])
def test_sniff_knows_every_format_the_handler_takes(fmt):
    assert sniff_image(encode(random_image(), fmt)[:32]) == fmt


@pytest.mark.parametrize("body", [b"", b"topk=3&data=x", b"BM=1&x=2&y=300000000", b"RIFF\0\0\0\0WAVEfmt ",
                                  b"%zz\r\n==", b"\xff\xd8", b"<html>"])
def test_sniff_refuses_what_is_not_an_image(body):
    assert sniff_image(body) is None


def test_form_encoded_image_is_relabelled_and_nothing_else_changes(front):
    image = jpeg()
    resp = post(front, "/predictions/clead", image,
                {**FORM, "Authorization": "Bearer k", "X-TopK": "3", "X-Custom": "a"})
    assert resp.status_code == 200
    seen = Upstream.seen[-1]
    headers = {k.lower(): v for k, v in seen["headers"]}
    assert headers["content-type"] == "application/octet-stream"
    assert headers["authorization"] == "Bearer k" and headers["x-topk"] == "3" and headers["x-custom"] == "a"
    assert seen["sha"] == hashlib.sha256(image).hexdigest() and seen["length"] == len(image)
    assert seen["path"] == "/predictions/clead"


@pytest.mark.parametrize("path", ["/predictions/clead", "/predictions/clead/1.0", "/invocations?model_name=clead",
                                  "/models/clead/invoke", "/clead/predict"])
def test_every_prediction_path_refuses_a_form_body_that_is_no_image(front, path):
    resp = post(front, path, b"%zz&==\r\nnot an image", FORM)
    assert resp.status_code == 415
    body = resp.json()
    assert body["type"] == "UnsupportedMediaType"
    assert "x-www-form-urlencoded" in body["message"] and "not a JPEG" in body["message"]
    assert Upstream.seen == [], "a refused request must not reach TorchServe"


def test_everything_else_passes_unchanged(front):
    """Other content types (even image-looking ones), and form bodies off the prediction paths."""
    for path, body, headers in [
        ("/predictions/clead", b"plain text", {"Content-Type": "text/plain"}),
        ("/predictions/clead", jpeg(), {"Content-Type": "image/jpeg"}),
        ("/predictions/clead", b"x", {"Content-Type": "multipart/form-data; boundary=zz"}),
        ("/api-description", b"a=1", FORM),
    ]:
        assert post(front, path, body, headers).status_code == 200
        seen = Upstream.seen[-1]
        assert dict((k.lower(), v) for k, v in seen["headers"])["content-type"] == headers["Content-Type"]
        assert seen["sha"] == hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize("status", [200, 400, 404, 413, 418, 503, 507])
def test_status_reason_headers_and_body_come_back_unchanged(front, status):
    conn = http.client.HTTPConnection(front.server_address[0], front.server_address[1], timeout=10)
    conn.request("POST", f"/status/{status}", b"x", {"Content-Type": "application/octet-stream"})
    resp = conn.getresponse()
    body = resp.read()
    assert resp.status == status
    if status == 418:
        assert resp.reason == "Custom Reason"
    assert resp.getheader("X-Request-Id") == "abc" and resp.headers.get_all("Set-Cookie") == ["a=1", "b=2"]
    assert json.loads(body)["path"] == f"/status/{status}"
    conn.close()


def test_keep_alive_on_both_sides(front):
    conn = http.client.HTTPConnection(front.server_address[0], front.server_address[1], timeout=10)
    sockets = set()
    for i, (body, headers) in enumerate([(jpeg(), FORM), (b"junk", FORM), (jpeg(), {}), (jpeg(), FORM)]):
        conn.request("POST", "/predictions/clead", body, headers)
        resp = conn.getresponse()
        resp.read()
        assert resp.status == (415 if i == 1 else 200)
        sockets.add(id(conn.sock))
    conn.close()
    assert len(sockets) == 1, "the client connection was not kept alive"
    assert len({s["peer"] for s in Upstream.seen}) == 1, "the front opened a new upstream connection per request"


def test_large_bodies_stream_through_up_to_the_limit(front):
    body = b"\xff\xd8\xff" + bytes(range(256)) * ((LIMIT - 1000) // 256)
    resp = post(front, "/predictions/clead", body, FORM)
    assert resp.status_code == 200 and Upstream.seen[-1]["sha"] == hashlib.sha256(body).hexdigest()


def test_over_the_limit_is_a_413_before_upstream(front):
    resp = post(front, "/predictions/clead", b"\xff" * (LIMIT + 1), {"Content-Type": "application/octet-stream"})
    assert resp.status_code == 413 and resp.json()["type"] == "PayloadTooLarge"
    assert f"limit of {LIMIT} bytes" in resp.json()["message"] and resp.json()["model"] == "clead"
    assert Upstream.seen == []


def test_expect_100_continue_is_refused_before_the_body_is_sent(front):
    with socket.create_connection(front.server_address, timeout=10) as sock:
        sock.sendall(b"POST /predictions/clead HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
                     b"Expect: 100-continue\r\n\r\n" % (LIMIT + 1))
        answer = sock.makefile("rb").read()  # the front answers and closes
    assert answer.startswith(b"HTTP/1.1 413") and b"PayloadTooLarge" in answer


def test_chunked_uploads_are_forwarded_with_a_length(front):
    image = jpeg()
    resp = post(front, "/predictions/clead", iter([image[:100], image[100:]]), FORM)  # a generator: chunked
    assert resp.status_code == 200
    seen = Upstream.seen[-1]
    assert seen["length"] == len(image) and seen["sha"] == hashlib.sha256(image).hexdigest()
    assert dict((k.lower(), v) for k, v in seen["headers"])["content-type"] == "application/octet-stream"
    too_big = post(front, "/predictions/clead", iter([b"\xff" * LIMIT, b"\xff"]), FORM)
    assert too_big.status_code == 413


@pytest.mark.parametrize("framing", [b"Transfer-Encoding: chunked\r\n\r\n-5\r\n",
                                     b"Transfer-Encoding: chunked\r\n\r\n0x5\r\n",
                                     b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\n",
                                     b"Transfer-Encoding: gzip\r\n\r\n",
                                     b"Content-Length: 5\r\nContent-Length: 6\r\n\r\n",
                                     b"Content-Length: -5\r\n\r\n"])
def test_malformed_framing_is_a_400_and_never_forwarded(front, framing):
    with socket.create_connection(front.server_address, timeout=10) as sock:
        sock.sendall(b"POST /predictions/clead HTTP/1.1\r\nHost: x\r\n" + framing)
        answer = sock.makefile("rb").readline()
    assert answer.startswith(b"HTTP/1.1 400") and Upstream.seen == []


def test_chunked_answers_are_relayed_whole(front):
    resp = post(front, "/chunked", b"x")
    assert resp.status_code == 200 and resp.json()["path"] == "/chunked"


def test_a_dead_upstream_is_a_502_json():
    # A short retry budget: the front retries an unreachable TorchServe (test_front_reliability.py).
    config = FrontConfig(port=0, upstream=f"http://127.0.0.1:{free_port()}", upstream_timeout_s=5, retry_budget_s=1)
    server = FrontServer(config)
    serve(server)
    try:
        resp = requests.post(server.url + "/predictions/clead", data=jpeg(), timeout=10)
        assert resp.status_code == 502 and resp.json()["type"] == "BadGateway"
    finally:
        server.shutdown()
        server.server_close()

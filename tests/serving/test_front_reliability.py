"""``serving.front`` under faults and hostile clients, against stand-in upstreams in this process:
retries of predictions TorchServe failed (503/507, unreachable), never of a 4xx; bounded
connections and predictions in flight (fast 503 + Retry-After); header and body deadlines for
slow clients; the keyless ``/health``. The real TorchServe is in ``test_servers.py``.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from serving.front import FrontConfig, FrontServer
from serving.torchserve import free_port


class Flaky(BaseHTTPRequestHandler):
    """``/predictions/fail-<status>-<n>``: answers ``status`` to the first n requests, then 200.
    ``/predictions/slow``: answers after 1 s. ``/models...``: a management API stand-in."""

    protocol_version = "HTTP/1.1"
    hits: Counter = Counter()
    bodies: list[str] = []
    workers: list[dict] = [{"status": "READY"}]
    auth: list[str | None] = []

    def log_message(self, *args) -> None:
        pass

    def answer(self, status: int, payload) -> None:
        data = json.dumps(payload).encode()
        self.send_response_only(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.hits[self.path] += 1
        self.bodies.append(hashlib.sha256(body).hexdigest())
        self.auth.append(self.headers.get("Authorization"))
        if self.path == "/predictions/slow":
            time.sleep(1.0)
        parts = self.path.rsplit("/", 1)[-1].split("-")
        if parts[0] == "fail" and self.hits[self.path] <= int(parts[2]):
            self.answer(int(parts[1]), {"code": int(parts[1]), "message": "worker died"})
        else:
            self.answer(200, {"label": "cat", "attempt": self.hits[self.path]})

    def do_GET(self) -> None:
        self.hits[self.path] += 1
        self.auth.append(self.headers.get("Authorization"))
        if self.path == "/models":
            self.answer(200, {"models": [{"modelName": "clead"}]})
        elif self.path == "/models/clead":
            self.answer(200, [{"modelName": "clead", "workers": self.workers}])
        else:
            self.answer(500, {"code": 500, "message": "no such path"})


def serve(server) -> None:
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()


def start_upstream(port: int = 0) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", port), Flaky)
    server.daemon_threads = True
    serve(server)
    return server


@pytest.fixture
def upstream():
    Flaky.hits, Flaky.bodies, Flaky.workers, Flaky.auth = Counter(), [], [{"status": "READY"}], []
    server = start_upstream()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def make_front(upstream):
    servers = []

    def make(**kw) -> FrontServer:
        kw.setdefault("upstream", f"http://127.0.0.1:{upstream.server_address[1]}")
        kw = {"upstream_timeout_s": 10, "idle_timeout_s": 10, "retry_backoff_s": 0.05, **kw}
        config = FrontConfig(port=0, **kw)
        server = FrontServer(config)
        serve(server)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.shutdown()
        server.server_close()


def post(front: FrontServer, path: str, body: bytes = b"\x89PNG\r\n\x1a\nimage") -> requests.Response:
    return requests.post(front.url + path, data=body, headers={"Content-Type": "image/png"}, timeout=20)


@pytest.mark.parametrize("status", [503, 507])
def test_a_prediction_whose_worker_died_is_sent_again(make_front, status):
    front = make_front()
    resp = post(front, f"/predictions/fail-{status}-2")
    assert resp.status_code == 200 and resp.json()["attempt"] == 3
    assert len(set(Flaky.bodies)) == 1, "every attempt must carry the same body"
    assert front.retries == 2


def test_a_4xx_is_never_retried(make_front):
    front = make_front()
    resp = post(front, "/predictions/fail-400-5")
    assert resp.status_code == 400 and Flaky.hits["/predictions/fail-400-5"] == 1


def test_only_prediction_calls_are_retried(make_front):
    front = make_front()
    resp = post(front, "/models/fail-507-3")  # not a prediction path: relayed once, as answered
    assert resp.status_code == 507 and Flaky.hits["/models/fail-507-3"] == 1


def test_retries_are_bounded_in_attempts_and_the_last_answer_is_relayed(make_front):
    front = make_front(retry_attempts=3, retry_budget_s=30)
    started = time.monotonic()
    resp = post(front, "/predictions/fail-503-100")
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "1"
    assert Flaky.hits["/predictions/fail-503-100"] == 3
    assert time.monotonic() - started < 5


def test_retries_are_bounded_in_time(make_front):
    front = make_front(retry_attempts=100, retry_budget_s=1.0, retry_backoff_s=0.2)
    started = time.monotonic()
    resp = post(front, "/predictions/fail-507-1000")
    elapsed = time.monotonic() - started
    assert resp.status_code == 507 and elapsed < 2.5, elapsed
    assert 2 <= Flaky.hits["/predictions/fail-507-1000"] <= 6


def test_an_unreachable_torchserve_is_retried_until_it_is_back():
    port = free_port()
    front = FrontServer(FrontConfig(port=0, upstream=f"http://127.0.0.1:{port}", retry_backoff_s=0.1,
                                    retry_budget_s=10))
    serve(front)
    late = []
    timer = threading.Timer(0.8, lambda: late.append(start_upstream(port)))
    Flaky.hits = Counter()
    try:
        timer.start()
        resp = post(front, "/predictions/clead")
        assert resp.status_code == 200 and front.retries >= 1
    finally:
        timer.join()
        for server in late:
            server.shutdown()
            server.server_close()
        front.shutdown()
        front.server_close()


def test_busy_server_answers_a_fast_503_with_retry_after(make_front):
    front = make_front(max_inflight=2)
    results = []
    threads = [threading.Thread(target=lambda: results.append(post(front, "/predictions/slow"))) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.3)  # both in flight upstream
    started = time.monotonic()
    busy = post(front, "/predictions/slow")
    assert busy.status_code == 503 and busy.headers["Retry-After"] == "1"
    assert "busy" in busy.json()["message"] and time.monotonic() - started < 0.5
    for t in threads:
        t.join()
    assert [r.status_code for r in results] == [200, 200]
    assert post(front, "/predictions/clead").status_code == 200  # slots come back


def test_excess_connections_get_a_fast_503_not_a_hang(make_front):
    front = make_front(max_connections=3)
    idle = [socket.create_connection(front.server_address[:2]) for _ in range(3)]
    try:
        time.sleep(0.2)
        started = time.monotonic()
        resp = requests.get(front.url + "/health", timeout=5)
        assert resp.status_code == 503 and resp.headers["Retry-After"] == "1"
        assert "too many connections" in resp.json()["message"] and time.monotonic() - started < 1
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.3)
    assert requests.get(front.url + "/health", timeout=5).status_code == 200


def stalled(front: FrontServer, data: bytes) -> socket.socket:
    sock = socket.create_connection(front.server_address[:2])
    sock.sendall(data)
    return sock


def closed_after(sock: socket.socket, limit_s: float) -> tuple[float, bytes]:
    sock.settimeout(limit_s)
    started, answer = time.monotonic(), b""
    while chunk := sock.recv(4096):
        answer += chunk
    return time.monotonic() - started, answer


def test_a_client_stalled_in_its_headers_is_cut_off_and_stalls_nobody(make_front):
    front = make_front(header_timeout_s=1.0)
    sock = stalled(front, b"POST /predictions/clead HTTP/1.1\r\nHost: x\r\nContent-Le")
    try:
        for _ in range(5):  # meanwhile everyone else is served at once
            assert post(front, "/predictions/clead").status_code == 200
        elapsed, answer = closed_after(sock, 5)
        assert elapsed < 2.0
        assert answer == b"" or answer.split(b" ")[1] in (b"400", b"408"), answer[:60]
    finally:
        sock.close()


def test_a_trickling_client_cannot_outlast_the_header_timeout(make_front):
    front = make_front(header_timeout_s=1.0)
    sock = stalled(front, b"POST /predictions/clead HTTP/1.1\r\n")
    started = time.monotonic()
    try:
        with pytest.raises(OSError):
            while time.monotonic() - started < 5:  # one header byte every 0.2 s resets any socket timeout
                sock.sendall(b"X")
                time.sleep(0.2)
        assert time.monotonic() - started < 3
    finally:
        sock.close()


def test_a_client_stalled_in_its_body_is_cut_off(make_front):
    front = make_front(body_timeout_s=1.0)
    sock = stalled(front, b"POST /predictions/clead HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                          b"Content-Length: 1000\r\n\r\n\x89PNG\r\n\x1a\n")
    try:
        assert post(front, "/predictions/clead").status_code == 200
        elapsed, _ = closed_after(sock, 5)
        assert elapsed < 2.0
        assert Flaky.hits["/predictions/clead"] == 1, "the half body must never reach TorchServe"
    finally:
        sock.close()


def test_health_needs_no_key_and_reports_workers(make_front, upstream, tmp_path):
    key_file = tmp_path / "key_file.json"
    key_file.write_text(json.dumps({"management": {"key": "m-key"}, "inference": {"key": "i-key"}}))
    front = make_front(management=f"http://127.0.0.1:{upstream.server_address[1]}", key_file=str(key_file))
    resp = requests.get(front.url + "/health", timeout=5)
    assert resp.status_code == 200 and resp.json()["models"] == {"clead": {"workers": 1, "ready": 1}}
    assert set(Flaky.auth) == {"Bearer m-key"}, "the front, not the caller, holds the key"
    Flaky.workers = [{"status": "UNLOADING"}]
    time.sleep(1.1)  # past the one-second cache
    resp = requests.get(front.url + "/healthz", timeout=5)
    assert resp.status_code == 503 and resp.json()["status"] == "unhealthy"
    assert requests.head(front.url + "/health", timeout=5).status_code == 503


def test_health_is_unhealthy_while_torchserve_is_down(make_front):
    front = make_front(management=f"http://127.0.0.1:{free_port()}")
    resp = requests.get(front.url + "/health", timeout=5)
    assert resp.status_code == 503 and resp.json()["status"] == "unhealthy"


def test_an_inherited_listening_socket_keeps_connections_across_a_front_restart(upstream):
    """What `clead-serve up` does: it holds the socket, so a connection made while no front runs
    waits in the backlog and is answered by the next front."""
    import os

    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    config = dict(upstream=f"http://127.0.0.1:{upstream.server_address[1]}", retry_backoff_s=0.05)
    first = FrontServer(FrontConfig(listen_fd=os.dup(listener.fileno()), **config))
    serve(first)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    assert requests.post(url + "/predictions/clead", data=b"x", timeout=5).status_code == 200
    first.shutdown()
    first.server_close()  # the front is gone; the socket is still listening in this process
    answers = []
    waiting = threading.Thread(target=lambda: answers.append(
        requests.post(url + "/predictions/clead", data=b"x", timeout=10).status_code))
    waiting.start()
    time.sleep(0.5)
    second = FrontServer(FrontConfig(listen_fd=os.dup(listener.fileno()), **config))
    serve(second)
    try:
        waiting.join(10)
        assert answers == [200]
    finally:
        second.shutdown()
        second.server_close()
        listener.close()


def test_the_dead_torchservers_key_is_renewed_for_a_grace_period_only(make_front, tmp_path):
    """After a supervisor restart TorchServe has new keys; a client still holding the old one is
    forwarded with the new one for key_grace_s. Any other key passes unchanged."""
    import time as clock

    from serving.front import ROTATED_KEYS

    key_file = tmp_path / "key_file.json"
    key_file.write_text(json.dumps({"inference": {"key": "new-key"}, "management": {"key": "m"}}))
    (tmp_path / ROTATED_KEYS).write_text(json.dumps({"inference": "old-key", "rotated_at": clock.time()}))
    front = make_front(key_file=str(key_file), key_grace_s=60)

    def sent_with(key: str) -> str:
        Flaky.auth.clear()
        requests.post(front.url + "/predictions/clead", data=b"x", headers={"Authorization": f"Bearer {key}"},
                      timeout=10)
        return Flaky.auth[-1]

    assert sent_with("old-key") == "Bearer new-key"
    assert sent_with("new-key") == "Bearer new-key"
    assert sent_with("revoked-or-wrong") == "Bearer revoked-or-wrong"
    (tmp_path / ROTATED_KEYS).write_text(json.dumps({"inference": "old-key", "rotated_at": clock.time() - 61}))
    assert sent_with("old-key") == "Bearer old-key", "past the grace period the old key is not renewed"

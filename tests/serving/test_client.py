"""``serving.client`` retries against stand-in servers: connection errors, 503/507 with backoff and
``Retry-After``, within attempts and a deadline; never a 4xx."""

from __future__ import annotations

import http.client
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from serving.client import NO_RETRY, PredictionError, RetryPolicy, TorchServeClient
from serving.torchserve import free_port

FAST = RetryPolicy(attempts=5, backoff_s=0.02, max_backoff_s=0.2, deadline_s=5)


class Scripted(BaseHTTPRequestHandler):
    """Answers the statuses in ``script`` in turn (then 200); ``retry_after`` goes on every 503."""

    protocol_version = "HTTP/1.1"
    script: list[int] = []
    retry_after: str | None = None
    seen: list[float] = []

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.seen.append(time.monotonic())
        status = self.script.pop(0) if self.script else 200
        body = json.dumps({"code": status, "message": "scripted"} if status != 200 else {"label": "cat"}).encode()
        self.send_response_only(status)
        if status == 503 and self.retry_after:
            self.send_header("Retry-After", self.retry_after)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def start(port: int = 0) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", port), Scripted)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


@pytest.fixture
def server():
    Scripted.script, Scripted.retry_after, Scripted.seen = [], None, []
    srv = start()
    yield srv
    srv.shutdown()
    srv.server_close()


def client(srv, retry: RetryPolicy = FAST) -> TorchServeClient:
    return TorchServeClient(f"http://127.0.0.1:{srv.server_address[1]}", retry=retry, timeout=5)


@pytest.mark.parametrize("status", [503, 507])
def test_a_restarting_server_is_retried(server, status):
    Scripted.script = [status, status]
    assert client(server).predict(b"img")["label"] == "cat"
    assert len(Scripted.seen) == 3


@pytest.mark.parametrize("status", [400, 401, 404, 413, 415])
def test_a_4xx_is_never_retried(server, status):
    Scripted.script = [status]
    with pytest.raises(PredictionError) as info:
        client(server).predict(b"img")
    assert info.value.status == status and len(Scripted.seen) == 1


def test_attempts_are_bounded_and_the_last_error_is_raised(server):
    Scripted.script = [503] * 10
    with pytest.raises(PredictionError) as info:
        client(server, RetryPolicy(attempts=3, backoff_s=0.01, deadline_s=5)).predict(b"img")
    assert info.value.status == 503 and len(Scripted.seen) == 3


def test_the_deadline_bounds_the_retries(server):
    Scripted.script = [503] * 100
    started = time.monotonic()
    with pytest.raises(PredictionError):
        client(server, RetryPolicy(attempts=100, backoff_s=0.1, max_backoff_s=0.1, deadline_s=0.5)).predict(b"img")
    assert time.monotonic() - started < 1.0 and len(Scripted.seen) <= 7


def test_retry_after_is_honoured_up_to_the_cap(server):
    Scripted.script, Scripted.retry_after = [503], "0.3"
    client(server, RetryPolicy(backoff_s=0.01, max_backoff_s=1.0)).predict(b"img")
    assert Scripted.seen[1] - Scripted.seen[0] >= 0.28
    Scripted.script, Scripted.seen, Scripted.retry_after = [503], [], "3600"
    client(server, RetryPolicy(backoff_s=0.01, max_backoff_s=0.2)).predict(b"img")
    assert Scripted.seen[1] - Scripted.seen[0] < 0.5, "a huge Retry-After is capped"


def test_no_retry_policy_fails_at_once(server):
    Scripted.script = [503]
    with pytest.raises(PredictionError):
        client(server, NO_RETRY).predict(b"img")
    assert len(Scripted.seen) == 1


def test_a_refused_connection_is_retried_until_the_server_is_back():
    import requests

    port = free_port()
    late = []
    timer = threading.Timer(0.3, lambda: late.append(start(port)))
    Scripted.script, Scripted.seen = [], []
    timer.start()
    try:
        answer = TorchServeClient(f"http://127.0.0.1:{port}", timeout=5,
                                  retry=RetryPolicy(backoff_s=0.1, deadline_s=5)).predict(b"img")
        assert answer["label"] == "cat"
    finally:
        timer.join()
        for srv in late:
            srv.shutdown()
            srv.server_close()
    with pytest.raises(requests.ConnectionError):  # and with nobody there, the error after the deadline
        TorchServeClient(f"http://127.0.0.1:{free_port()}", retry=RetryPolicy(backoff_s=0.01, deadline_s=0.2)
                         ).predict(b"img")


class ConnectionClosed(http.client.HTTPException):
    """geventhttpclient's HTTPConnectionClosed (tritonclient's transport) is one of these."""


class FakeServerError(Exception):
    def __init__(self, status, message="scripted"):
        super().__init__(f"[{status}] {message}")  # tritonclient's InferenceServerException reads so
        self._status = status

    def status(self):
        return self._status


class FakeTriton:
    """Stands in for ``tritonclient.http.InferenceServerClient``: fails as scripted, then answers."""

    def __init__(self, script):
        self.script = list(script)
        self.calls = 0

    def infer(self, model, inputs, outputs=None):
        self.calls += 1
        if self.script:
            raise self.script.pop(0)
        return "result"


def triton_client(script):
    """A TritonClient without tritonclient installed here: only the retry path is under test."""
    from serving.client import TritonClient

    client = object.__new__(TritonClient)
    client.client, client._server_error, client.retry, client.answered = FakeTriton(script), FakeServerError, FAST, set()
    return client


def infer(client):
    from serving.client import with_retries

    return with_retries(client.retry, lambda: client._infer_once("clead", [], []))


def test_triton_client_retries_a_restarting_triton():
    client = triton_client([ConnectionRefusedError(111, "refused"), FakeServerError("503"),
                            ConnectionResetError(104, "reset")])
    assert infer(client) == "result" and client.client.calls == 4


def test_triton_client_never_retries_a_4xx():
    for error in (FakeServerError("400"), FakeServerError("404", "Request for unknown model: 'x' is not found")):
        client = triton_client([error])
        with pytest.raises(FakeServerError):
            infer(client)
        assert client.client.calls == 1


def test_triton_client_rides_out_a_triton_restart():
    """What a SIGKILLed Triton answers while `clead-serve triton` restarts it: the answer in flight
    cut off (geventhttpclient raises an http.client.HTTPException, not an OSError), refused
    connections, 404 while the new Triton knows no model yet, then 404 while PyTriton loads it."""
    unknown = FakeServerError("404", "Request for unknown model: 'clead' is not found")
    loading = FakeServerError("404", "Request for unknown model: 'clead' has no available versions")
    client = triton_client([])
    client.retry = RetryPolicy(attempts=12, backoff_s=0.01, max_backoff_s=0.05, deadline_s=5)
    assert infer(client) == "result"  # answered once: a later 404 for it is a restart, not a wrong name
    client.client.script = [ConnectionClosed("connection closed."), ConnectionRefusedError(111, "refused"),
                            unknown, loading, loading]
    assert infer(client) == "result" and client.client.calls == 1 + 6


def test_a_new_triton_client_retries_a_model_being_loaded_only():
    loading = FakeServerError("404", "Request for unknown model: 'clead' has no available versions")
    client = triton_client([loading])
    assert infer(client) == "result" and client.client.calls == 2


def test_triton_client_default_retries_span_a_restart():
    from serving.client import TRITON_RETRY

    backoff = sum(min(TRITON_RETRY.backoff_s * 2 ** n, TRITON_RETRY.max_backoff_s)
                  for n in range(TRITON_RETRY.attempts - 1))
    # `clead-serve triton` answers again about 10 s after Triton died (docs/reliability.md)
    assert 15 <= backoff <= TRITON_RETRY.deadline_s

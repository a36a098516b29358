"""A small HTTP front for TorchServe's inference API, so a bare ``curl --data-binary @cat.jpg``
gets a prediction.

curl's ``--data-binary`` labels the body ``application/x-www-form-urlencoded`` unless told
otherwise, and TorchServe 0.12's frontend decodes such a body as an HTML form before any
handler sees it (``InferenceRequestHandler.parseRequest`` runs Netty's
``HttpPostRequestDecoder`` unconditionally; no ``config.properties`` key turns it off): image
bytes are destroyed or fail with ``500 ErrorDataDecoderException``. The front listens on the
public inference port and relays every request to TorchServe on an internal loopback port,
changing one thing: a form-encoded body on a prediction path that *is* an image (by its magic
bytes) is relabelled ``application/octet-stream``; one that is not gets a 415 JSON error from
the front (our handler refuses every form-encoded body anyway). Headers (``Authorization``
included), status codes and bodies pass unchanged in both directions.

It is written with the standard library (a threaded ``http.server`` and ``http.client``):
a reverse proxy such as nginx could relabel by content type but not by the body's first
bytes, and the serving extra has no HTTP server. Bodies stream through in chunks and are
bounded by TorchServe's own ``max_request_size``; each client connection is kept alive and
has its own kept-alive connection to TorchServe (whose Netty pipeline has no idle timeout).

Reliability (docs/reliability.md): a prediction whose TorchServe worker died (TorchServe answers
507 for the batch it was running, 503 while no worker is up) or that could not reach TorchServe
is sent again, with backoff, bounded in attempts and total time; predictions are idempotent, so
a retry never does harm, and a 4xx is never retried. Fairness: client connections and
predictions in flight are bounded (excess ones get a fast 503 with ``Retry-After``, never a
hang), a request's headers and body must arrive within their timeouts, and ``/health`` answers a
load balancer without the inference key.

Run by ``clead-serve up`` as ``python -m serving.front`` (see ``serving/torchserve.py``).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import socket
import socketserver
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator
from urllib.parse import urlsplit

from serving.errors import error_type

FORM = "application/x-www-form-urlencoded"
# The paths TorchServe routes to ``predict`` -> ``parseRequest``, where the form decoding happens.
PREDICTION_PATH = re.compile(
    r"^/(?:predictions/[^/?]+|invocations|models/[^/?]+/invoke|[^/?]+(?:/[^/?]+)?/predict)(?:[/?]|$)")
MODEL_IN_PATH = re.compile(r"^/(?:predictions|models)/([^/?]+)")
# Hop-by-hop headers (RFC 9110 7.6.1) belong to one connection and are not relayed; Expect is
# answered here (100-continue), so TorchServe never sees it.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
                        "upgrade", "expect"})
SNIFF_BYTES = 32  # enough for every signature below
CHUNK = 64 * 1024
# DIB header sizes of the BMP variants Pillow reads (core, OS/2 v2 short/long, info, v2-v5).
BMP_INFO_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})
# TorchServe's answers for a prediction it could not run: 503 while the model has no worker
# (one is restarting), 507 for the jobs of a worker that died mid-batch. Both are retried.
RETRY_STATUSES = frozenset({503, 507})
HEALTH_PATHS = ("/health", "/healthz")
# Written by the supervisor (serving/supervisor.py) when it restarts TorchServe, beside the key file:
# the inference key of the instance that died (TorchServe writes new keys at every start).
ROTATED_KEYS = "key_file.rotated.json"


@dataclass
class FrontConfig:
    """Where the front listens, where TorchServe's inference API is, and the limits it keeps."""

    host: str = "127.0.0.1"
    port: int = 8080  # the public inference port
    upstream: str = "http://127.0.0.1:8090"  # TorchServe's own inference address (loopback)
    max_request_bytes: int = 10 * 1024 * 1024 + 64 * 1024  # = TorchServe's max_request_size
    upstream_timeout_s: float = 300.0  # longest wait for TorchServe's answer (it queues, batches, runs)
    idle_timeout_s: float = 60.0  # a client connection silent this long (idle or mid-request) is closed
    header_timeout_s: float = 10.0  # a request's line and headers must all arrive within this (slowloris)
    body_timeout_s: float = 60.0  # ... and its body within this (a 10 MB image at >= 170 kB/s)
    max_connections: int = 256  # client connections at once (one thread each); more: a fast 503, closed
    # Predictions relayed at once: the front's queue. More get a fast 503 with Retry-After. Kept below
    # TorchServe's job_queue_size (100 per model by default), so TorchServe's own queue never fills
    # and its 503 keeps one meaning: no worker up.
    max_inflight: int = 96
    retry_attempts: int = 12  # tries of one prediction that TorchServe failed with 503/507 or never got
    # Total time one prediction may spend on retries: long enough for the supervisor to restart a
    # dead TorchServe on a busy 2-core machine (13-26 s measured, docs/reliability.md), within
    # serving.client's 30 s timeout.
    retry_budget_s: float = 20.0
    retry_backoff_s: float = 0.2  # pause before the first retry; doubles each time, at most 2 s
    retry_after_s: int = 1  # the Retry-After of the front's own 503s
    management: str | None = None  # TorchServe's management address: /health reads worker states there
    key_file: str | None = None  # TorchServe's key_file.json (token auth on), for the management key
    listen_fd: int | None = None  # an inherited listening socket (clead-serve up keeps it across restarts)
    # For this long after the supervisor restarted TorchServe, a request carrying the dead instance's
    # inference key is forwarded with the new one (see FrontServer.renewed_key).
    key_grace_s: float = 120.0


def sniff_image(head: bytes) -> str | None:
    """The image format announced by a file's first bytes (the formats the handler accepts), or None.

    By hand rather than Pillow: Pillow needs far more than a prefix to identify a JPEG (it
    reads markers up to the frame header), and the front must decide before streaming the rest."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    # "BM" alone is too weak (a form body could start with it): also ask for a known DIB header size.
    if head[:2] == b"BM" and len(head) >= 18 and int.from_bytes(head[14:18], "little") in BMP_INFO_SIZES:
        return "BMP"
    return None


def mime_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


def connection_tokens(headers) -> set[str]:
    """Header names listed in ``Connection``: hop-by-hop for this connection only."""
    return {t.strip().lower() for t in ",".join(headers.get_all("Connection", [])).split(",") if t.strip()}


class Refused(Exception):
    """A request the front answers itself, with TorchServe's error JSON shape."""

    def __init__(self, code: int, message: str, close: bool = False, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.close = close  # the body was not read: the connection cannot carry another request
        self.retry_after = retry_after  # seconds, sent as Retry-After


class ClientGone(Exception):
    """The client closed or stalled while sending its body; there is nobody to answer."""


class FrontHandler(BaseHTTPRequestHandler):
    """Relays one client connection's requests (HTTP/1.1 keep-alive) to TorchServe."""

    protocol_version = "HTTP/1.1"  # keep-alive: every answer carries a Content-Length or is chunked
    server_version = "clead-front"
    server: "FrontServer"

    def setup(self) -> None:
        self.timeout = self.server.config.idle_timeout_s  # applied to the client socket by setup()
        super().setup()
        # Headers and body leave in separate writes; with Nagle's algorithm the second waits for
        # the peer's delayed ACK (~40 ms on Linux) on every request.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.upstream: http.client.HTTPConnection | None = None
        self.timed_out = False  # set by the server's reaper: the request's headers or body came too slowly

    def handle_one_request(self) -> None:
        """Wait (up to the idle timeout) for a request to begin, then give it header_timeout_s for
        its line and headers: the socket timeout alone restarts with every byte a slow client sends."""
        try:
            started = self.rfile.peek(1)
        except OSError:  # idle timeout, reset
            self.close_connection = True
            return
        if not started:
            self.close_connection = True
            return
        self.server.watch(self, self.server.config.header_timeout_s)
        try:
            super().handle_one_request()
        finally:
            self.server.unwatch(self)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            if self.upstream is not None:
                self.upstream.close()

    def log_request(self, code="-", size="-") -> None:
        pass  # TorchServe's access_log.log already has every request; errors still go to stderr

    def do_POST(self) -> None:
        self.relay()

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] in HEALTH_PATHS:
            self.answer_health()
        else:
            self.relay()

    do_HEAD = do_GET
    do_PUT = do_DELETE = do_OPTIONS = do_PATCH = do_POST

    # -- request side --------------------------------------------------------------------
    def handle_expect_100(self) -> bool:
        """Refuse an oversized body before the client sends it, as TorchServe would."""
        try:
            self.content_length()
        except Refused as refused:
            self.answer_error(refused)
            return False
        return super().handle_expect_100()

    def content_length(self) -> int | None:
        """The declared body length (None: chunked); refuses what TorchServe would not take."""
        encodings = [e.strip().lower() for e in ",".join(self.headers.get_all("Transfer-Encoding", [])).split(",")
                     if e.strip()]
        lengths = set(self.headers.get_all("Content-Length", []))
        if encodings:
            if encodings != ["chunked"] or lengths:
                # Both framings at once, or an encoding we cannot undo: the classic smuggling shapes.
                raise Refused(400, f"unsupported request framing: Transfer-Encoding {encodings}, "
                                   f"Content-Length {sorted(lengths)}", close=True)
            return None
        if not lengths:
            return 0
        if len(lengths) > 1 or not next(iter(lengths)).strip().isdigit():
            raise Refused(400, f"invalid Content-Length {sorted(lengths)}", close=True)
        length = int(next(iter(lengths)))
        if length > self.server.config.max_request_bytes:
            raise Refused(413, f"request body of {length} bytes is over the server's limit of "
                               f"{self.server.config.max_request_bytes} bytes", close=True)
        return length

    def read_client(self, n: int) -> bytes:
        try:
            data = self.rfile.read(n)
        except OSError as exc:  # includes the idle timeout
            raise ClientGone(str(exc)) from None
        if len(data) < n:
            raise ClientGone("client closed the connection mid-body")
        return data

    def read_chunked(self) -> bytes:
        """A chunked body, collected up to the limit (rare for uploads; TorchServe gets a Content-Length)."""
        body = bytearray()
        limit = self.server.config.max_request_bytes
        while True:
            try:
                line = self.rfile.readline(1024)
            except OSError as exc:
                raise ClientGone(str(exc)) from None
            if not line.endswith(b"\n"):
                raise ClientGone("client closed the connection mid-body")
            digits = line.split(b";", 1)[0].strip()
            if not digits or digits.strip(b"0123456789abcdefABCDEF"):
                raise Refused(400, f"bad chunk size line {line[:40]!r}", close=True)
            size = int(digits, 16)
            if size == 0:
                break
            if len(body) + size > limit:
                raise Refused(413, f"request body is over the server's limit of {limit} bytes", close=True)
            body += self.read_client(size)
            self.read_client(2)  # CRLF after the chunk
        while self.read_client_line() not in (b"\r\n", b"\n"):  # trailers, ignored
            pass
        return bytes(body)

    def read_client_line(self) -> bytes:
        try:
            line = self.rfile.readline(65537)
        except OSError as exc:
            raise ClientGone(str(exc)) from None
        if not line:
            raise ClientGone("client closed the connection mid-body")
        return line

    def open_body(self) -> tuple[bytes, Iterator[bytes], int]:
        """(first bytes, an iterator over the rest, total length): enough to sniff, the rest streamed."""
        length = self.content_length()
        if length is None:
            body = self.read_chunked()
            return body, iter(()), len(body)
        head = self.read_client(min(length, SNIFF_BYTES))

        def rest() -> Iterator[bytes]:
            left = length - len(head)
            while left:
                chunk = self.read_client(min(left, CHUNK))
                left -= len(chunk)
                yield chunk

        return head, rest(), length

    def upstream_headers(self) -> list[tuple[str, str]]:
        """The client's end-to-end headers, repeated ones included, in order (Content-Length is set anew)."""
        drop = HOP_BY_HOP | connection_tokens(self.headers) | {"content-length"}
        return [(k, v) for k, v in self.headers.items() if k.lower() not in drop]

    # -- relay ---------------------------------------------------------------------------
    def relay(self) -> None:
        prediction = bool(PREDICTION_PATH.match(self.path)) and self.command == "POST"
        if prediction and not self.server.inflight.acquire(blocking=False):
            self.answer_error(Refused(503, f"the server is busy ({self.server.config.max_inflight} predictions in "
                                           "flight); retry later", close=True,
                                      retry_after=self.server.config.retry_after_s))
            return
        try:
            self.relay_admitted(prediction)
        finally:
            if prediction:
                self.server.inflight.release()

    def relay_admitted(self, prediction: bool) -> None:
        try:
            if self.timed_out:
                raise Refused(408, f"the request's headers did not arrive within "
                                   f"{self.server.config.header_timeout_s:.0f}s", close=True)
            self.server.watch(self, self.server.config.body_timeout_s)
            head, rest, length = self.open_body()
            headers = self.upstream_headers()
            content_type = next((v for k, v in headers if k.lower() == "content-type"), None)
            if length and prediction and mime_type(content_type) == FORM:
                headers = self.relabel(headers, head, rest)
            if prediction:
                body = head + b"".join(rest)  # held whole: a retry sends it again
                self.server.unwatch(self)
                response = self.forward_with_retry(headers, body)
            else:
                response = self.forward(headers, head, rest, length)
                self.server.unwatch(self)
        except Refused as refused:
            self.server.unwatch(self)
            self.answer_error(refused)
            return
        except ClientGone:
            self.close_connection = True
            self.drop_upstream()
            return
        try:
            self.copy_response(response)
        except OSError:
            # Either side failed mid-answer: nothing sensible can follow on these connections.
            self.close_connection = True
            self.drop_upstream()

    def forward_with_retry(self, headers: list[tuple[str, str]], body: bytes) -> http.client.HTTPResponse:
        """Relay a prediction; again, after a pause, while TorchServe answers 503/507 or cannot be
        reached, within retry_attempts and retry_budget_s. The last answer (or 502) goes to the client."""
        cfg = self.server.config
        deadline = time.monotonic() + cfg.retry_budget_s
        for attempt in range(1, cfg.retry_attempts + 1):
            delay = min(cfg.retry_backoff_s * 2 ** (attempt - 1), 2.0)
            final = attempt == cfg.retry_attempts or time.monotonic() + delay > deadline
            headers = self.server.renew_authorization(headers)  # TorchServe may have restarted meanwhile
            try:
                response = self.forward(headers, body, iter(()), len(body))
            except Refused as refused:
                if refused.code != 502 or final:
                    raise
                why = "TorchServe unreachable"
            else:
                if response.status not in RETRY_STATUSES or final:
                    return response
                why = f"TorchServe answered {response.status}"
                response.read()  # drained: the kept-alive connection stays usable
                if response.will_close:
                    self.drop_upstream()
            self.server.count_retry()
            print(f"front: {why} for {self.command} {self.path.split('?', 1)[0]}; retry {attempt}/"
                  f"{cfg.retry_attempts - 1} in {delay:.1f}s", file=sys.stderr, flush=True)
            time.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def relabel(self, headers: list[tuple[str, str]], head: bytes, rest: Iterator[bytes]) -> list[tuple[str, str]]:
        """A form-encoded image becomes octet-stream; anything else form-encoded is refused here."""
        if sniff_image(head):
            return [(k, v) for k, v in headers if k.lower() != "content-type"] + [
                ("Content-Type", "application/octet-stream")]
        for _ in rest:  # drain what the client sends (bounded by the limit) to keep the connection
            pass
        raise Refused(415, "the body was sent as Content-Type application/x-www-form-urlencoded "
                           "(curl --data-binary's default) but is not a JPEG, PNG, WebP, BMP or GIF image; "
                           "send the image file's bytes, or -F data=@image.jpg for multipart")

    def forward(self, headers: list[tuple[str, str]], head: bytes, rest: Iterator[bytes], length: int):
        if self.upstream is None:
            url = urlsplit(self.server.config.upstream)
            self.upstream = NoDelayConnection(url.hostname, url.port, timeout=self.server.config.upstream_timeout_s)
        conn = self.upstream
        try:
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for key, value in headers:
                conn.putheader(key, value)
            if length or self.command in ("POST", "PUT", "PATCH"):
                conn.putheader("Content-Length", str(length))
            conn.endheaders()
            if head:
                conn.send(head)
            for chunk in rest:
                conn.send(chunk)
            return conn.getresponse()
        except TimeoutError:
            self.drop_upstream()
            raise Refused(504, f"TorchServe at {self.server.config.upstream} did not answer within "
                               f"{self.server.config.upstream_timeout_s:.0f}s") from None
        except (OSError, http.client.HTTPException) as exc:
            self.drop_upstream()
            # The client's body may be partly unread: close after answering.
            raise Refused(502, f"TorchServe at {self.server.config.upstream} is not answering ({exc!r})",
                          close=True) from None

    def drop_upstream(self) -> None:
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None

    # -- response side -------------------------------------------------------------------
    def copy_response(self, response: http.client.HTTPResponse) -> None:
        self.send_response_only(response.status, response.reason)
        drop = HOP_BY_HOP | connection_tokens(response.headers)
        for key, value in response.getheaders():
            if key.lower() not in drop:
                self.send_header(key, value)
        has_body = self.command != "HEAD" and response.status not in (204, 304) and response.status >= 200
        chunked = has_body and response.getheader("Content-Length") is None
        if chunked and self.request_version != "HTTP/1.1":
            self.close_connection = True  # an HTTP/1.0 client reads to the end of the connection
            chunked = False
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        if response.status == 503 and response.getheader("Retry-After") is None:
            self.send_header("Retry-After", str(self.server.config.retry_after_s))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        while chunk := response.read(CHUNK):
            if chunked:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            else:
                self.wfile.write(chunk)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    def answer_error(self, refused: Refused) -> None:
        match = MODEL_IN_PATH.match(self.path or "")
        body = json.dumps({"code": refused.code, "type": error_type(refused.code),
                           "message": refused.message, "model": match.group(1) if match else None}).encode()
        if refused.close:
            self.close_connection = True
        try:
            self.send_response_only(refused.code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if refused.retry_after is not None:
                self.send_header("Retry-After", str(refused.retry_after))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            if refused.close:
                self.linger()
        except OSError:
            self.close_connection = True

    def answer_health(self) -> None:
        """200 while every model has a READY worker, else 503; no key needed (the front reads it)."""
        status, report = self.server.health()
        body = json.dumps(report).encode()
        try:
            self.send_response_only(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except OSError:
            self.close_connection = True

    def linger(self) -> None:
        """Closing with the client's body unread would reset the connection, and the client could
        lose our answer with it: signal the end of the answer, then read and drop what still comes
        (bounded in bytes and time) until the client closes."""
        self.connection.shutdown(socket.SHUT_WR)
        self.connection.settimeout(2.0)
        dropped = 0
        while dropped < 4 * self.server.config.max_request_bytes:
            data = self.connection.recv(CHUNK)
            if not data:
                break
            dropped += len(data)


class NoDelayConnection(http.client.HTTPConnection):
    """To TorchServe without Nagle's algorithm (see ``FrontHandler.setup``)."""

    def connect(self) -> None:
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class FrontServer(ThreadingHTTPServer):
    """One thread per client connection, at most ``max_connections``; threads die with the process."""

    daemon_threads = True
    request_queue_size = 128  # listen backlog: 32 clients connecting at once must not be dropped

    def __init__(self, config: FrontConfig) -> None:
        self.config = config
        self.inflight = threading.BoundedSemaphore(config.max_inflight)
        self.lock = threading.Lock()
        self.connections = 0
        self.retries = 0  # predictions sent again (see forward_with_retry)
        self.deadlines: dict[FrontHandler, float] = {}
        self.health_cache: tuple[float, int, dict] = (0.0, 503, {})
        self.health_lock = threading.Lock()
        self.stopped = threading.Event()
        super().__init__((config.host, config.port), FrontHandler, bind_and_activate=config.listen_fd is None)
        if config.listen_fd is not None:
            self.socket.close()
            self.socket = socket.socket(fileno=config.listen_fd)
            self.server_address = self.socket.getsockname()
            self.server_name, self.server_port = self.server_address[:2]
        threading.Thread(target=self.reap, name="front-reaper", daemon=True).start()

    # -- bounded connections -------------------------------------------------------------
    def process_request(self, request, client_address) -> None:
        with self.lock:
            full = self.connections >= self.config.max_connections
            if not full:
                self.connections += 1
        if full:
            self.refuse_connection(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            with self.lock:
                self.connections -= 1
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.lock:
                self.connections -= 1

    def refuse_connection(self, sock: socket.socket) -> None:
        """A fast 503 on the accepting thread (no handler thread, nothing read), then close."""
        body = json.dumps({"code": 503, "type": error_type(503), "model": None,
                           "message": f"too many connections (max {self.config.max_connections}); retry later"})
        head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nRetry-After: {self.config.retry_after_s}\r\n"
                "Connection: close\r\n\r\n")
        try:
            sock.setblocking(False)
            sock.send((head + body).encode())
            sock.shutdown(socket.SHUT_WR)
            try:
                sock.recv(CHUNK)  # what already arrived, so close() sends FIN rather than RST
            except OSError:
                pass
        except OSError:
            pass
        self.shutdown_request(sock)

    # -- header / body deadlines ---------------------------------------------------------
    def watch(self, handler: FrontHandler, seconds: float) -> None:
        with self.lock:
            self.deadlines[handler] = time.monotonic() + seconds

    def unwatch(self, handler: FrontHandler) -> None:
        with self.lock:
            self.deadlines.pop(handler, None)

    def reap(self) -> None:
        """Stop reading from connections past their header/body deadline: their reads end at once."""
        while not self.stopped.wait(0.25):
            now = time.monotonic()
            with self.lock:
                late = [h for h, deadline in self.deadlines.items() if deadline < now]
                for handler in late:
                    del self.deadlines[handler]
            for handler in late:
                handler.timed_out = True
                try:
                    handler.connection.shutdown(socket.SHUT_RD)
                except OSError:
                    pass

    def renew_authorization(self, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """Headers with the dead TorchServe's inference key replaced by the new one, within key_grace_s
        of a supervisor restart. Only that key is renewed, so a key revoked through TorchServe's
        token API never is; every other request passes unchanged."""
        if not self.config.key_file:
            return headers
        out = []
        for key, value in headers:
            if key.lower() == "authorization":
                value = self.renewed_key(value) or value
            out.append((key, value))
        return out

    def renewed_key(self, authorization: str) -> str | None:
        folder = os.path.dirname(self.config.key_file)
        try:
            with open(os.path.join(folder, ROTATED_KEYS)) as f:
                rotated = json.load(f)
            with open(self.config.key_file) as f:
                current = json.load(f)["inference"]["key"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        old = rotated.get("inference")
        if not old or authorization.strip() != f"Bearer {old}" or current == old:
            return None
        if time.time() - float(rotated.get("rotated_at", 0)) > self.config.key_grace_s:
            return None
        return f"Bearer {current}"

    def count_retry(self) -> None:
        with self.lock:
            self.retries += 1

    # -- health --------------------------------------------------------------------------
    def health(self) -> tuple[int, dict]:
        """Worker states from TorchServe's management API, cached for a second (probes are frequent)."""
        with self.health_lock:
            at, status, report = self.health_cache
            if time.monotonic() - at > 1.0:
                status, report = self.check_health()
                self.health_cache = (time.monotonic(), status, report)
            return status, report

    def check_health(self) -> tuple[int, dict]:
        if not self.config.management:
            return 200, {"status": "healthy", "detail": "front only: no management address to ask"}
        url = urlsplit(self.config.management)
        headers = {}
        key = management_key(self.config.key_file)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        models: dict[str, dict] = {}
        try:
            conn = http.client.HTTPConnection(url.hostname, url.port, timeout=5)
            try:
                names = [m["modelName"] for m in get_json(conn, "/models", headers)["models"]]
                for name in names:
                    workers = get_json(conn, f"/models/{name}", headers)[0].get("workers", [])
                    models[name] = {"workers": len(workers),
                                    "ready": sum(w.get("status") == "READY" for w in workers)}
            finally:
                conn.close()
        except (OSError, http.client.HTTPException, ValueError, KeyError, IndexError, TypeError) as exc:
            return 503, {"status": "unhealthy", "detail": f"TorchServe's management API: {exc!r}"}
        healthy = bool(models) and all(m["ready"] for m in models.values())
        return (200 if healthy else 503), {"status": "healthy" if healthy else "unhealthy", "models": models}

    def server_close(self) -> None:
        self.stopped.set()
        super().server_close()

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can hang where DNS is missing.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    @property
    def url(self) -> str:
        return f"http://{self.server_name}:{self.server_port}"


def management_key(key_file: str | None) -> str | None:
    if not key_file:
        return None
    try:
        with open(key_file) as f:
            return json.load(f)["management"]["key"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def get_json(conn: http.client.HTTPConnection, path: str, headers: dict[str, str]):
    conn.request("GET", path, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    if resp.status != 200:
        raise ValueError(f"GET {path} answered {resp.status}")
    return json.loads(data)


def build_parser() -> argparse.ArgumentParser:
    defaults = FrontConfig()
    parser = argparse.ArgumentParser(prog="python -m serving.front", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default=defaults.host)
    parser.add_argument("--port", type=int, default=defaults.port)
    parser.add_argument("--upstream", default=defaults.upstream, help="TorchServe's inference address")
    parser.add_argument("--max-request-bytes", type=int, default=defaults.max_request_bytes)
    parser.add_argument("--upstream-timeout", type=float, default=defaults.upstream_timeout_s)
    parser.add_argument("--idle-timeout", type=float, default=defaults.idle_timeout_s)
    parser.add_argument("--header-timeout", type=float, default=defaults.header_timeout_s)
    parser.add_argument("--body-timeout", type=float, default=defaults.body_timeout_s)
    parser.add_argument("--max-connections", type=int, default=defaults.max_connections)
    parser.add_argument("--max-inflight", type=int, default=defaults.max_inflight,
                        help="predictions relayed at once (the queue); more get a fast 503 with Retry-After")
    parser.add_argument("--retry-attempts", type=int, default=defaults.retry_attempts)
    parser.add_argument("--retry-budget", type=float, default=defaults.retry_budget_s)
    parser.add_argument("--management", default=None, help="TorchServe's management address, for /health")
    parser.add_argument("--key-file", default=None, help="TorchServe's key_file.json, for /health")
    parser.add_argument("--listen-fd", type=int, default=None,
                        help="serve on this inherited listening socket instead of binding --host/--port")
    return parser


def _stop(signum: int, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = FrontConfig(host=args.host, port=args.port, upstream=args.upstream,
                         max_request_bytes=args.max_request_bytes, upstream_timeout_s=args.upstream_timeout,
                         idle_timeout_s=args.idle_timeout, header_timeout_s=args.header_timeout,
                         body_timeout_s=args.body_timeout, max_connections=args.max_connections,
                         max_inflight=args.max_inflight, retry_attempts=args.retry_attempts,
                         retry_budget_s=args.retry_budget, management=args.management, key_file=args.key_file,
                         listen_fd=args.listen_fd)
    # Started in its own session by clead-serve, which stops it with SIGTERM: leave serve_forever
    # through the same path as Ctrl-C, so the listening socket is closed on the way out.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _stop)
    try:
        server = FrontServer(config)
    except OSError as exc:
        print(f"front: cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr)
        return 1
    print(f"front on {server.url} -> {config.upstream}", flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    print("front stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

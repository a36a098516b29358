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

Run by ``clead-serve up`` as ``python -m serving.front`` (see ``serving/torchserve.py``).
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import signal
import socket
import socketserver
import sys
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator
from urllib.parse import urlsplit

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
ERROR_TYPES = {400: "BadRequest", 413: "PayloadTooLarge", 415: "UnsupportedMediaType", 502: "BadGateway",
               504: "GatewayTimeout"}


@dataclass
class FrontConfig:
    """Where the front listens, where TorchServe's inference API is, and the limits it keeps."""

    host: str = "127.0.0.1"
    port: int = 8080  # the public inference port
    upstream: str = "http://127.0.0.1:8090"  # TorchServe's own inference address (loopback)
    max_request_bytes: int = 10 * 1024 * 1024 + 64 * 1024  # = TorchServe's max_request_size
    upstream_timeout_s: float = 300.0  # longest wait for TorchServe's answer (it queues, batches, runs)
    idle_timeout_s: float = 60.0  # a client connection silent this long (idle or mid-request) is closed


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

    def __init__(self, code: int, message: str, close: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.close = close  # the body was not read: the connection cannot carry another request


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

    do_GET = do_PUT = do_DELETE = do_HEAD = do_OPTIONS = do_PATCH = do_POST

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
        try:
            head, rest, length = self.open_body()
            headers = self.upstream_headers()
            content_type = next((v for k, v in headers if k.lower() == "content-type"), None)
            if length and PREDICTION_PATH.match(self.path) and mime_type(content_type) == FORM:
                headers = self.relabel(headers, head, rest)
            response = self.forward(headers, head, rest, length)
        except Refused as refused:
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
        body = json.dumps({"code": refused.code, "type": ERROR_TYPES.get(refused.code, "Error"),
                           "message": refused.message, "model": match.group(1) if match else None}).encode()
        if refused.close:
            self.close_connection = True
        try:
            self.send_response_only(refused.code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            if refused.close:
                self.linger()
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
    """One thread per client connection; threads die with the process (stop = exit)."""

    daemon_threads = True
    request_queue_size = 128  # listen backlog: 32 clients connecting at once must not be dropped

    def __init__(self, config: FrontConfig) -> None:
        self.config = config
        super().__init__((config.host, config.port), FrontHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can hang where DNS is missing.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    @property
    def url(self) -> str:
        return f"http://{self.server_name}:{self.server_port}"


def build_parser() -> argparse.ArgumentParser:
    defaults = FrontConfig()
    parser = argparse.ArgumentParser(prog="python -m serving.front", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default=defaults.host)
    parser.add_argument("--port", type=int, default=defaults.port)
    parser.add_argument("--upstream", default=defaults.upstream, help="TorchServe's inference address")
    parser.add_argument("--max-request-bytes", type=int, default=defaults.max_request_bytes)
    parser.add_argument("--upstream-timeout", type=float, default=defaults.upstream_timeout_s)
    parser.add_argument("--idle-timeout", type=float, default=defaults.idle_timeout_s)
    return parser


def _stop(signum: int, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = FrontConfig(host=args.host, port=args.port, upstream=args.upstream,
                         max_request_bytes=args.max_request_bytes, upstream_timeout_s=args.upstream_timeout,
                         idle_timeout_s=args.idle_timeout)
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

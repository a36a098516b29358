"""Every limit at its value and just past it: image bytes and pixels, top-k, the front's body
size, request line and header sizes, header count, multipart parts, connections and
predictions in flight (the last two in ``test_front_reliability.py``)."""

from __future__ import annotations

import socket
import threading

import pytest

from serving.front import FrontConfig, FrontServer
from serving.predictor import Limits, Predictor, RequestError, decode_image, extract_image, is_error, parse_topk
from tests.serving.conftest import CLASSES, encode, random_image
from tests.serving.fuzzimages import huge_declared

SIZE = (3, 32, 32)


def status(data: bytes, limits: Limits) -> int:
    try:
        decode_image(data, SIZE, limits)
    except RequestError as err:
        return err.code
    return 200


def test_max_bytes_at_and_past():
    image = encode(random_image(40, 30), "PNG")
    assert status(image, Limits(max_bytes=len(image))) == 200
    assert status(image, Limits(max_bytes=len(image) - 1)) == 413


def test_max_pixels_at_and_past():
    image = encode(random_image(40, 30), "PNG")
    assert status(image, Limits(max_pixels=40 * 30)) == 200
    assert status(image, Limits(max_pixels=40 * 30 - 1)) == 413


@pytest.mark.parametrize("kind", ["png", "gif", "bmp", "jpeg"])
def test_declared_pixels_just_past_the_limit_are_refused_before_decoding(kind):
    limits = Limits(max_pixels=1000 * 1000)
    assert status(huge_declared(kind, 1000, 1001), limits) == 413


def test_topk_at_and_past_its_bounds():
    n = len(CLASSES)
    assert parse_topk(str(n), 5, n) == n
    assert parse_topk(str(n + 1), 5, n) == n  # past the class count: clamped, not an error
    assert parse_topk("1", 5, n) == 1
    with pytest.raises(RequestError):
        parse_topk("0", 5, n)


def test_one_multipart_image_part_and_not_two():
    image = encode(random_image(), "PNG")
    assert extract_image({"photo": image}) == image  # one file field, whatever its name
    assert extract_image({"photo": image, "topk": b"3"}) == image  # plus the topk field
    with pytest.raises(RequestError) as info:
        extract_image({"photo": image, "other": image})
    assert info.value.code == 400 and "one image" in info.value.message


def test_predictor_answers_each_part_count_case(artifacts):
    predictor = Predictor.from_artifact(str(artifacts["clead"]))
    image = encode(random_image(), "PNG")
    one, two = predictor.predict([{"photo": image}, {"a": image, "b": image}])
    assert not is_error(one) and two["code"] == 400


# -- the front ----------------------------------------------------------------------------
class Echo:
    """A minimal upstream: 200 to everything, after reading the body."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.send_response_only(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()


LIMIT = 50_000


@pytest.fixture(scope="module")
def front():
    echo = Echo()
    server = FrontServer(FrontConfig(port=0, upstream=f"http://127.0.0.1:{echo.server.server_address[1]}",
                                     max_request_bytes=LIMIT, retry_attempts=1))
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()
    echo.server.shutdown()
    echo.server.server_close()


def raw(front, request: bytes) -> bytes:
    with socket.create_connection(front.server_address[:2], timeout=10) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def first_status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def post_of(size: int, extra: bytes = b"", path: bytes = b"/predictions/clead") -> bytes:
    return (b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nConnection: close\r\n" + extra
            + b"Content-Length: %d\r\n\r\n" % size + b"\x89PNG" + b"\0" * (size - 4))


def test_front_body_limit_at_and_past(front):
    assert first_status(raw(front, post_of(LIMIT))) == 200
    assert first_status(raw(front, post_of(LIMIT + 1))) == 413


# http.server's own bounds, which the front keeps: a request or header line of at most 65,536
# bytes (431 past it, 414 for the request line) and at most 100 header-block lines, the blank
# line that ends them included: 99 headers (431 past it).
def test_request_line_at_and_past(front):
    path_at = b"/predictions/clead?" + b"a" * (65536 - len(b"POST /predictions/clead? HTTP/1.1\r\n"))
    assert first_status(raw(front, post_of(10, path=path_at))) == 200
    assert first_status(raw(front, post_of(10, path=path_at + b"a"))) == 414


def test_header_line_at_and_past(front):
    value_at = b"v" * (65536 - len(b"X-Big: \r\n"))
    assert first_status(raw(front, post_of(10, b"X-Big: " + value_at + b"\r\n"))) == 200
    assert first_status(raw(front, post_of(10, b"X-Big: " + value_at + b"v\r\n"))) == 431


def test_header_count_at_and_past(front):
    base = 4  # Host, Content-Type, Connection, Content-Length
    at = b"".join(b"X-%d: 1\r\n" % i for i in range(99 - base))
    assert first_status(raw(front, post_of(10, at))) == 200
    assert first_status(raw(front, post_of(10, at + b"X-one-more: 1\r\n"))) == 431

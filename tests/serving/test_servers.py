"""Against real servers: TorchServe through ``clead-serve up`` and Triton through ``clead-serve triton``.

Both are started the way a user starts them (the CLI, in a subprocess), on free ports bound to
127.0.0.1, each TorchServe with its own work folder (TMPDIR, logs, key file, model store) and,
as by default, behind the front (``serving/front.py``); ``torchserve.torchserve_url`` reaches
TorchServe itself.
Every wait is bounded; the fixtures' finalizers stop whatever is still running. Near the end,
Triton's tritonserver is SIGKILLed under a small load through ``TritonClient`` (nothing may be
lost); the last tests stop each server with SIGINT (Ctrl-C) and check that no process of it is
left, Triton's after its restart.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import requests

from serving.client import PredictionError, TorchServeClient
from serving.torchserve import (free_port, group_members, port_in_use, read_keys, read_record, sample_png,
                                stop_instance)
from tests.serving.conftest import CLASSES, encode, random_image

pytestmark = [pytest.mark.server, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
MAX_BYTES = 200_000  # handler limit in these tests; TorchServe's own is 64 KiB above it


class ServerProcess:
    """A CLI server in its own session, with its output collected by a thread."""

    def __init__(self, cmd: list[str], ready_line: str, timeout_s: float) -> None:
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        threading.Thread(target=self._read, args=(ready_line,), daemon=True).start()
        deadline = time.monotonic() + timeout_s
        while not self.ready.wait(0.5):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.interrupt()
                pytest.fail(f"{cmd[3]} did not get ready (exit {self.proc.returncode}):\n{self.output()}")

    def _read(self, ready_line: str) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            if ready_line in line:
                self.ready.set()

    def output(self, last: int = 60) -> str:
        return "".join(self.lines[-last:])

    def interrupt(self, timeout_s: float = 90) -> int:
        """Ctrl-C, as a terminal would send it; kill only if it does not stop in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode


PORT_FLAGS = ("--inference-port", "--management-port", "--metrics-port", "--grpc-inference-port",
              "--grpc-management-port")


def serve_up(workdir: Path, models: dict[str, Path], *args: str, timeout_s: float = 200) -> ServerProcess:
    """``clead-serve up`` as a user starts it, every port a free loopback one; returns once it is
    ready, with ``workdir``, ``url`` (the front), ``management``, ``metrics_url`` and
    ``port_of`` (flag -> port) set. Stop it with ``interrupt()`` and ``stop_instance``."""
    port_of = {flag: free_port() for flag in PORT_FLAGS}
    cmd = [sys.executable, "-m", "serving.cli", "up", "--workdir", str(workdir)]
    for name, path in models.items():
        cmd += ["--model", f"{name}={path}"]
    cmd += list(args)
    for flag, port in port_of.items():
        cmd += [flag, str(port)]
    server = ServerProcess(cmd, "press Ctrl-C to stop", timeout_s=timeout_s)
    server.workdir, server.port_of = workdir, port_of
    server.url = f"http://127.0.0.1:{port_of['--inference-port']}"  # the front (on by default)
    server.management = f"http://127.0.0.1:{port_of['--management-port']}"
    server.metrics_url = f"http://127.0.0.1:{port_of['--metrics-port']}/metrics"
    return server


@pytest.fixture(scope="module")
def torchserve(artifacts, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("torchserve")
    # A long batch window makes batching of concurrent requests certain on a busy 2-core box.
    server = serve_up(workdir, {"clead": artifacts["clead"], "baseline": artifacts["baseline"]},
                      "--batch-size", "8", "--max-batch-delay-ms", "300", "--max-bytes", str(MAX_BYTES),
                      "--timeout", "150")
    server.torchserve_url = read_record(workdir)["torchserve_inference_url"]  # TorchServe itself, behind it
    server.ports = list(server.port_of.values()) + [int(server.torchserve_url.rsplit(":", 1)[1])]
    server.client = TorchServeClient(server.url, key_file=workdir / "key_file.json")
    yield server
    server.interrupt()
    stop_instance(workdir, timeout_s=30)  # safety net; a no-op when Ctrl-C worked


@pytest.fixture(scope="module")
def triton(artifacts):
    from serving.tritonenv import ensure_env

    ensure_env()  # one-time venv; done here so the server's own wait below stays short
    http, metrics = free_port(), free_port()
    cmd = [sys.executable, "-m", "serving.cli", "triton",
           "--model", f"clead={artifacts['clead']}", "--model", f"baseline={artifacts['baseline']}",
           "--http-port", str(http), "--grpc-port", str(free_port()), "--metrics-port", str(metrics),
           "--max-queue-delay-us", "200000"]
    server = ServerProcess(cmd, "Triton is ready", timeout_s=180)
    server.url = f"127.0.0.1:{http}"
    server.metrics_url = f"http://127.0.0.1:{metrics}/metrics"
    server.children = server_children(server.proc.pid)
    yield server
    server.interrupt()
    for child in server.children:  # safety net: nothing of it may outlive the test module
        if child.is_running():
            child.kill()


def server_children(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def images(n: int) -> list[bytes]:
    return [encode(random_image(48, 40, seed=i), "PNG") for i in range(n)]


def triton_predict(server, paths: list[Path], model: str = "clead") -> list[dict]:
    """The user path: ``clead-serve predict --engine triton`` (runs in the Triton venv)."""
    out = subprocess.run([sys.executable, "-m", "serving.cli", "predict", "--engine", "triton", "--url", server.url,
                          "--model", model, "--json", *map(str, paths)], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.strip(), out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


# -- TorchServe -----------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["clead", "baseline"])
def test_both_models_answer(torchserve, model):
    body = torchserve.client.predict(encode(random_image(), "JPEG"), model=model)
    assert body["model"] == model and body["version"] == "1"
    assert body["label"] == CLASSES[body["index"]] and len(body["topk"]) == 5
    assert body["probability"] == max(body["topk"].values())


def test_the_two_models_differ(torchserve):
    image = images(1)[0]
    a = torchserve.client.predict(image, "clead", topk=10)["topk"]
    b = torchserve.client.predict(image, "baseline", topk=10)["topk"]
    assert a != b


def test_token_auth_is_on(torchserve):
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        resp = requests.post(f"{torchserve.url}/predictions/clead", data=images(1)[0], headers=headers, timeout=30)
        # TorchServe 0.12 answers a missing or wrong key with 400, not 401.
        assert resp.status_code == 400 and resp.json()["type"] == "InvalidKeyException"
    keys = read_keys(torchserve.workdir)
    assert set(keys) == {"management", "inference", "api"}
    assert (torchserve.workdir / "key_file.json").stat().st_mode & 0o077 == 0  # owner-only


def test_model_registration_api_is_off(torchserve):
    keys = read_keys(torchserve.workdir)
    mgmt = torchserve.url.rsplit(":", 1)[0] + f":{torchserve.ports[1]}"
    resp = requests.post(f"{mgmt}/models?url=clead.mar&model_name=again",
                         headers={"Authorization": f"Bearer {keys['management']}"}, timeout=30)
    assert resp.status_code == 405  # enable_model_api=false: registering is not a method here
    listed = requests.get(f"{mgmt}/models", headers={"Authorization": f"Bearer {keys['management']}"}, timeout=30)
    assert sorted(m["modelName"] for m in listed.json()["models"]) == ["baseline", "clead"]


def test_concurrent_requests_are_batched_and_a_bad_one_is_isolated(torchserve):
    batch_sizes = []
    for _ in range(3):  # scheduling can split a round; three rounds make a batch > 1 certain
        results = torchserve.client.predict_many([*images(7), b"not an image"], "clead", concurrency=8)
        bad = results[-1]
        assert isinstance(bad, PredictionError) and bad.status == 415, bad
        assert bad.body["type"] == "UnsupportedMediaType" and "not a JPEG" in bad.body["message"]
        good = results[:-1]
        assert all(isinstance(r, dict) and r["label"] in CLASSES for r in good), good
        batch_sizes += [r["batch_size"] for r in good]
        if max(batch_sizes) > 1:
            break
    assert max(batch_sizes) > 1, f"TorchServe never batched concurrent requests: {batch_sizes}"


def test_topk_header_and_multipart_field(torchserve):
    key = read_keys(torchserve.workdir)["inference"]
    auth = {"Authorization": f"Bearer {key}"}
    image = images(1)[0]
    raw = requests.post(f"{torchserve.url}/predictions/clead", data=image, headers={**auth, "X-TopK": "3"}, timeout=30)
    assert raw.status_code == 200 and len(raw.json()["topk"]) == 3
    form = requests.post(f"{torchserve.url}/predictions/clead", files={"data": ("x.png", image, "image/png")},
                         data={"topk": "2"}, headers=auth, timeout=30)
    assert form.status_code == 200 and len(form.json()["topk"]) == 2
    assert form.json()["index"] == raw.json()["index"]
    bad = requests.post(f"{torchserve.url}/predictions/clead", data=image, headers={**auth, "X-TopK": "many"}, timeout=30)
    assert bad.status_code == 400 and "topk" in bad.json()["message"]


def curl(*args: str) -> tuple[int, dict]:
    """Run curl; (HTTP status, JSON body)."""
    out = subprocess.run(["curl", "-sS", "-w", "\n%{http_code}", *args], capture_output=True, text=True, timeout=60)
    body, _, status = out.stdout.rpartition("\n")
    assert status.isdigit(), out.stderr
    return int(status), json.loads(body)


def test_bare_curl_data_binary_gets_the_prediction(torchserve, tmp_path):
    """The issue's "done when": curl --data-binary @some.jpg plus the auth header, nothing else.

    curl labels the body application/x-www-form-urlencoded; the front relabels it (it is a
    JPEG) and TorchServe's answer comes back unchanged. Straight to TorchServe, the same
    request dies in its form decoder with a 500, which is why the front exists."""
    key = read_keys(torchserve.workdir)["inference"]
    image = tmp_path / "some.jpg"
    image.write_bytes(encode(random_image(64, 48, seed=3), "JPEG"))
    auth = f"Authorization: Bearer {key}"
    status, body = curl("--data-binary", f"@{image}", "-H", auth, f"{torchserve.url}/predictions/clead")
    assert status == 200, body
    assert body["model"] == "clead" and body["label"] == CLASSES[body["index"]] and len(body["topk"]) == 5
    assert body == {**torchserve.client.predict(image, "clead"), "batch_size": body["batch_size"]}
    status, body = curl("--data-binary", f"@{image}", "-H", "Authorization: Bearer wrong",
                        f"{torchserve.url}/predictions/clead")
    assert status == 400 and body["type"] == "InvalidKeyException"  # auth is still TorchServe's
    status, body = curl("--data-binary", f"@{image}", "-H", auth, f"{torchserve.torchserve_url}/predictions/clead")
    assert status == 500 and body["type"] == "ErrorDataDecoderException"


def test_form_encoded_body_that_is_no_image_gets_a_415_not_a_500(torchserve, tmp_path):
    key = read_keys(torchserve.workdir)["inference"]
    text = tmp_path / "notes.txt"
    text.write_bytes(b"note=not an image\r!")  # a lone CR in a value: TorchServe's form decoder fails on it
    args = ["--data-binary", f"@{text}", "-H", f"Authorization: Bearer {key}"]
    status, body = curl(*args, f"{torchserve.url}/predictions/clead")
    assert status == 415 and body["type"] == "UnsupportedMediaType" and body["model"] == "clead"
    assert "x-www-form-urlencoded" in body["message"] and "not a JPEG" in body["message"]
    status, body = curl(*args, f"{torchserve.torchserve_url}/predictions/clead")
    assert status == 500, "TorchServe alone now decodes this form: the front's refusal may be obsolete"


def test_front_keeps_the_connection_alive(torchserve):
    key = read_keys(torchserve.workdir)["inference"]
    host, port = torchserve.url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    sockets, statuses = set(), []
    for body, content_type in [(images(1)[0], "application/x-www-form-urlencoded"), (b"junk", None),
                               (encode(random_image(), "JPEG"), "application/x-www-form-urlencoded"),
                               (images(1)[0], "image/png")]:
        headers = {"Authorization": f"Bearer {key}", **({"Content-Type": content_type} if content_type else {})}
        conn.request("POST", "/predictions/baseline", body, headers)
        resp = conn.getresponse()
        answer = json.loads(resp.read())
        statuses.append(resp.status)
        sockets.add(id(conn.sock))
        assert resp.status != 200 or answer["model"] == "baseline"
    conn.close()
    assert statuses == [200, 415, 200, 200] and len(sockets) == 1


def test_curl_style_uploads(torchserve, tmp_path):
    """What README shows: curl --data-binary with or without a content type, curl -T (PUT), curl -F."""
    key = read_keys(torchserve.workdir)["inference"]
    image = tmp_path / "x.jpg"
    image.write_bytes(encode(random_image(64, 48), "JPEG"))
    url = f"{torchserve.url}/predictions/clead"
    auth = ["-H", f"Authorization: Bearer {key}"]
    variants = {
        "bare": ["--data-binary", f"@{image}"],
        "octet-stream": ["--data-binary", f"@{image}", "-H", "Content-Type: application/octet-stream"],
        "image/jpeg": ["--data-binary", f"@{image}", "-H", "Content-Type: image/jpeg"],
        "put": ["-T", str(image)],
        "multipart": ["-F", f"data=@{image}"],
    }
    labels = set()
    for name, args in variants.items():
        out = subprocess.run(["curl", "-sS", *args, *auth, url], capture_output=True, text=True, timeout=60)
        body = json.loads(out.stdout)
        assert body.get("label") in CLASSES, (name, body)
        labels.add(body["label"])
    assert len(labels) == 1
    # Past the front, curl --data-binary without a content type sends a form, which TorchServe
    # decodes before the handler: bytes that break its form decoder get TorchServe's own 500
    # (test above), the rest reach the handler as an empty form, which answers how to send the
    # image instead (what --no-front users see).
    png = tmp_path / "sample.png"
    png.write_bytes(sample_png())
    status, body = curl("--data-binary", f"@{png}", *auth, f"{torchserve.torchserve_url}/predictions/clead")
    assert status == 415 and "Content-Type: application/octet-stream" in body["message"]
    status, body = curl("--data-binary", f"@{png}", *auth, url)
    assert status == 200 and body["label"] in CLASSES


def test_size_limits(torchserve):
    with pytest.raises(PredictionError) as handler_limit:
        torchserve.client.predict(b"\xff" * (MAX_BYTES + 1000), "clead")
    assert handler_limit.value.status == 413 and f"{MAX_BYTES} bytes" in handler_limit.value.body["message"]
    with pytest.raises(PredictionError) as server_limit:  # over max_request_size: the front refuses it
        torchserve.client.predict(b"\xff" * (MAX_BYTES + 200_000), "clead")
    assert server_limit.value.status == 413
    assert f"limit of {MAX_BYTES + 64 * 1024} bytes" in server_limit.value.body["message"]
    direct = TorchServeClient(torchserve.torchserve_url, key_file=torchserve.workdir / "key_file.json")
    with pytest.raises(PredictionError) as torchserve_limit:  # the same limit as TorchServe's own
        direct.predict(b"\xff" * (MAX_BYTES + 64 * 1024 + 1), "clead")
    assert torchserve_limit.value.status == 413
    assert torchserve.client.predict(images(1)[0], "clead")["label"] in CLASSES  # worker still alive


def test_cli_predict(torchserve, tmp_path):
    paths = []
    for i, data in enumerate(images(2)):
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(data)
    out = subprocess.run([sys.executable, "-m", "serving.cli", "predict", "--url", torchserve.url, "--model", "baseline",
                          "--key-file", str(torchserve.workdir / "key_file.json"), "--topk", "2", *map(str, paths)],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("baseline v1") == 2 and str(paths[1]) in out.stdout


# -- Triton ---------------------------------------------------------------------------------
def test_triton_gives_the_same_answers_as_torchserve(torchserve, triton, tmp_path):
    paths = []
    for i, data in enumerate([*images(3), encode(random_image(64, 64, seed=9), "JPEG"), encode(random_image(), "BMP")]):
        paths.append(tmp_path / f"{i}.img")
        paths[-1].write_bytes(data)
    for model in ("clead", "baseline"):
        from_triton = triton_predict(triton, paths, model)
        for path, answer in zip(paths, from_triton):
            expected = torchserve.client.predict(path, model)
            assert answer["model"] == model
            assert answer["index"] == expected["index"] and answer["label"] == expected["label"]
            assert answer["probability"] == pytest.approx(expected["probability"], abs=1e-5)


def test_triton_refuses_a_bad_image_like_torchserve(triton, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    answer = triton_predict(triton, [bad])[0]
    assert answer["code"] == 415 and "not a JPEG" in answer["message"]


def test_open_inference_protocol_with_plain_requests(torchserve, triton, tmp_path):
    """examples/oip_client.py, the KServe v2 request a user writes by hand, in both encodings."""
    paths = []
    for i, data in enumerate([images(1)[0], encode(random_image(64, 48, seed=4), "JPEG")]):
        paths.append(tmp_path / f"{i}.img")
        paths[-1].write_bytes(data)
    for mode in ([], ["--binary"]):
        out = subprocess.run([sys.executable, "examples/oip_client.py", "--url", f"http://{triton.url}",
                              "--model", "baseline", "--topk", "3", *mode, *map(str, paths)],
                             cwd=REPO, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        for path, line in zip(paths, out.stdout.splitlines()):
            answer, expected = json.loads(line), torchserve.client.predict(path, "baseline", topk=3)
            assert answer["image"] == str(path) and answer["label"] == expected["label"]
            assert answer["topk"] == pytest.approx(expected["topk"], abs=1e-5)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"these are notes, not a picture\n")
    out = subprocess.run([sys.executable, "examples/oip_client.py", "--url", f"http://{triton.url}", str(bad)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and out.stdout, out.stdout + out.stderr
    assert json.loads(out.stdout)["code"] == 415


# -- metrics (Prometheus text on each engine's metrics port) ----------------------------------
def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """``{(name, labels): value}`` from a Prometheus text exposition."""
    resp = requests.get(url, timeout=30)
    assert resp.status_code == 200 and resp.text.strip(), f"{url}: {resp.status_code}, {len(resp.text)} bytes"
    samples = {}
    for line in resp.text.splitlines():
        match = re.match(r'^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)', line)
        if match and not line.startswith("#"):
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
            samples[(match.group(1), labels)] = float(match.group(3))
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    """Sum of ``name`` over the series carrying ``labels`` (0 when there is none yet)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def wait_for(check, timeout_s: float = 30.0):
    """Backend metrics reach TorchServe's frontend through the worker's log: poll briefly."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


def test_torchserve_metrics_count_requests_errors_batches_and_times(torchserve):
    series = {  # what to compare before and after: (metric, labels)
        "requests": ("CleadRequests", {"ModelName": "baseline"}),
        "errors": ("CleadRequestErrors", {"ModelName": "baseline", "ErrorType": "UnsupportedMediaType"}),
        "images_forwarded": ("CleadBatchSize_sum", {"ModelName": "baseline"}),
        "forward_passes": ("CleadForwardSeconds_count", {"ModelName": "baseline"}),
        "decodes": ("CleadDecodeSeconds_count", {"ModelName": "baseline"}),
        "frontend_requests": ("ts_inference_requests_total", {"model_name": "baseline"}),
        "clead_errors": ("CleadRequestErrors", {"ModelName": "clead"}),
    }
    before = scrape(torchserve.metrics_url)
    results = torchserve.client.predict_many([*images(3), b"not an image"], "baseline", concurrency=4)
    assert sum(isinstance(r, PredictionError) for r in results) == 1

    def moved():
        after = scrape(torchserve.metrics_url)
        delta = {k: value(after, name, **labels) - value(before, name, **labels) for k, (name, labels) in series.items()}
        return delta if delta["requests"] >= 4 and delta["frontend_requests"] >= 4 else None

    delta = wait_for(moved)
    assert delta, f"the metrics did not move: {scrape(torchserve.metrics_url)}"
    assert delta["requests"] == delta["frontend_requests"] == 4  # three images and the bad one, on both sides
    assert delta["errors"] == 1 and delta["clead_errors"] == 0  # by error type, per model
    assert delta["images_forwarded"] == 3  # every good image went through exactly one forward pass
    assert 1 <= delta["forward_passes"] <= 3 and delta["forward_passes"] <= delta["decodes"] <= 4  # one per batch


def test_triton_metrics_count_requests(triton, tmp_path):
    path = tmp_path / "one.png"
    path.write_bytes(images(1)[0])
    before = scrape(triton.metrics_url)
    triton_predict(triton, [path, path], "baseline")

    def moved():
        after = scrape(triton.metrics_url)
        return (value(after, "nv_inference_request_success", model="baseline")
                - value(before, "nv_inference_request_success", model="baseline")) >= 2 and after

    after = wait_for(moved, timeout_s=15)  # Triton updates its counters when a request completes
    assert after, f"nv_inference_request_success did not move: {scrape(triton.metrics_url)}"
    assert value(after, "nv_inference_count", model="baseline") - value(before, "nv_inference_count",
                                                                        model="baseline") == 2
    # summary_latencies is on: request-duration quantiles for a p99 alert (deploy/prometheus/alerts.yaml)
    assert value(after, "nv_inference_request_summary_us_count", model="baseline") - value(
        before, "nv_inference_request_summary_us_count", model="baseline") == 2
    assert value(after, "nv_inference_request_summary_us", model="baseline", quantile="0.99") > 0
    assert value(after, "nv_inference_request_success", model="clead") == value(
        before, "nv_inference_request_success", model="clead")


# -- a Triton kill (before the clean stops: the Ctrl-C test then stops the restarted Triton) ---
def v2_predicts(url: str, image: bytes) -> bool:
    """One KServe v2 prediction (examples/oip_client.py, plain JSON), never retried: did Triton answer it?"""
    from examples.oip_client import infer_json

    try:
        return "label" in infer_json(f"http://{url}", "clead", image, timeout=10)
    except (requests.ConnectionError, RuntimeError):  # refused, or not a 200
        return False


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def tritonservers(server) -> list[psutil.Process]:
    """The server binary PyTriton runs, among the descendants of `clead-serve triton`."""
    return [c for c in server_children(server.proc.pid) if c.name() == "tritonserver"]


def test_a_killed_tritonserver_is_restarted_and_the_client_loses_nothing(triton, tmp_path):
    """SIGKILL of the tritonserver (not of `clead-serve triton`'s python, its supervisor) under four
    `clead-serve predict --engine triton` (TritonClient, default retries): every prediction is
    answered, and Triton answers again within the bound (benchmarks/reliability.py measures it)."""
    paths = []
    for i, data in enumerate(images(3)):
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(data)
    old = tritonservers(triton)
    assert len(old) == 1, server_children(triton.proc.pid)
    stubs = old[0].children(recursive=True)  # Python-backend stubs and theirs: none may outlive the restart
    cmd = [sys.executable, "-m", "serving.cli", "predict", "--engine", "triton", "--url", triton.url, "--json",
           *map(str, paths * 15)]
    clients = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"}) for _ in range(4)]
    answers: list[list[tuple[float, str]]] = [[] for _ in clients]
    readers = [threading.Thread(target=lambda c=c, a=a: a.extend((time.monotonic(), line) for line in c.stdout),
                                daemon=True) for c, a in zip(clients, answers)]
    for reader in readers:
        reader.start()
    try:
        deadline = time.monotonic() + 90
        while min(map(len, answers)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert min(map(len, answers)) >= 3, [c.stderr.read() for c in clients if c.poll() is not None]
        old[0].kill()
        killed = time.monotonic()
        while not v2_predicts(triton.url, images(1)[0]) and time.monotonic() - killed < 90:
            time.sleep(0.1)
        recovered = time.monotonic() - killed
        codes = [c.wait(timeout=120) for c in clients]
    finally:
        for c in clients:
            if c.poll() is None:
                c.kill()
    for reader in readers:
        reader.join(timeout=10)
    assert recovered < 60, f"Triton did not answer within 60 s of the kill:\n{triton.output()}"
    lines = [line for a in answers for _, line in a]
    lost = [line for line in lines if "label" not in json.loads(line)]
    assert codes == [0] * 4 and not lost, (lost[:5], [c.stderr.read()[-2000:] for c in clients])
    assert len(lines) == 4 * len(paths) * 15
    assert all(any(at > killed for at, _ in a) for a in answers), "a client finished before the kill"
    assert triton.proc.poll() is None and "supervisor: Triton died" in triton.output(200), triton.output()
    new = tritonservers(triton)
    assert len(new) == 1 and new[0].pid != old[0].pid
    left = [p for p in stubs if alive(p)]
    assert not left, f"the dead Triton's processes outlived its restart: {left}"
    triton.children = server_children(triton.proc.pid)  # the restarted ones, for the Ctrl-C test and the finalizer


# -- clean stops (keep these last: they end the module's servers) ---------------------------
def test_torchserve_stops_cleanly_on_ctrl_c(torchserve):
    record = read_record(torchserve.workdir)
    pgid, front = record["pgid"], psutil.Process(record["front_pid"])
    assert group_members(pgid), "TorchServe should be running before the stop"
    assert "serving.front" in " ".join(front.cmdline()), "the front should be running before the stop"
    assert torchserve.interrupt() == 0, torchserve.output()
    assert "stopped" in torchserve.output()
    assert group_members(pgid) == [], "processes of TorchServe outlived Ctrl-C"
    assert not front.is_running(), "the front outlived Ctrl-C"
    assert not any(port_in_use("127.0.0.1", p) for p in torchserve.ports)
    assert read_record(torchserve.workdir) is None


def test_triton_stops_cleanly_on_ctrl_c(triton):
    assert triton.children, "Triton runs tritonserver as a child process"
    assert triton.interrupt() == 0, triton.output()
    psutil.wait_procs(triton.children, timeout=30)
    assert not [c for c in triton.children if c.is_running()], "Triton processes outlived Ctrl-C"

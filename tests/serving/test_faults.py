"""Faults and hostile input against a real ``clead-serve up`` (front + TorchServe, loopback):

* 300 hostile images one by one: only 200 or 4xx, the model worker never restarts;
* malformed images among good ones in the same batches: the good ones are all answered;
* ``/health`` without a key; every port on loopback only;
* a model worker SIGKILLed under load: no request lost at the public port (the front retries);
* the front and TorchServe SIGKILLed: ``up`` restarts them, and they answer again.

Triton's kill (``clead-serve triton`` restarts a SIGKILLed tritonserver, ``TritonClient`` loses
nothing) is in ``test_servers.py``, on its module's Triton.

The numbers for the report come from ``benchmarks/reliability.py`` (``make reliability``).
"""

from __future__ import annotations

import ipaddress
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import requests
from hypothesis import HealthCheck, given, settings

from serving.torchserve import read_keys, read_record, stop_instance
from tests.serving.conftest import encode, random_image
from tests.serving.fuzzimages import SEEDS, hostile_images
from tests.serving.test_servers import serve_up

pytestmark = [pytest.mark.server, pytest.mark.slow]


@pytest.fixture(scope="module")
def served(artifacts, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("faults")
    server = serve_up(workdir, {"clead": artifacts["clead"]}, "--batch-size", "8", "--max-batch-delay-ms", "50",
                      "--max-pixels", "4000000", "--timeout", "200", timeout_s=240)
    yield server
    server.interrupt()
    stop_instance(workdir, timeout_s=30)


def auth(server) -> dict[str, str]:
    return {"Authorization": f"Bearer {read_keys(server.workdir)['inference']}"}


def predict(server, data: bytes, session: requests.Session | None = None) -> requests.Response:
    return (session or requests).post(f"{server.url}/predictions/clead", data=data, timeout=60,
                                      headers={"Content-Type": "application/octet-stream", **auth(server)})


def worker_pids(server) -> list[int]:
    headers = {"Authorization": f"Bearer {read_keys(server.workdir)['management']}"}
    resp = requests.get(f"{server.management}/models/clead", headers=headers, timeout=10)
    return [w["pid"] for w in resp.json()[0]["workers"] if w.get("status") == "READY"]


def good(n: int) -> list[bytes]:
    return [encode(random_image(40, 32, seed=i), "PNG") for i in range(n)]


def test_hostile_images_against_the_real_server(served):
    pids = worker_pids(served)
    session = requests.Session()
    statuses = []

    @settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(hostile_images())
    def run(data: bytes) -> None:
        resp = predict(served, data, session)
        statuses.append(resp.status_code)
        assert resp.status_code == 200 or 400 <= resp.status_code < 500, (resp.status_code, resp.text[:200])

    run()
    assert len(statuses) >= 270
    assert worker_pids(served) == pids, "a hostile image restarted the model worker"


def test_malformed_images_never_cost_their_batch_mates(served):
    bad = [SEEDS["jpeg_rgb"][:20], SEEDS["png_rgb"][:16], SEEDS["webp_lossy"][:40], b"\x89PNG\r\n\x1a\n" + b"\0" * 50]
    sizes = []
    for _ in range(3):
        batch = good(8) + bad
        with ThreadPoolExecutor(len(batch)) as pool:
            answers = list(pool.map(lambda data: predict(served, data), batch))
        assert [a.status_code for a in answers[:8]] == [200] * 8, [a.text[:100] for a in answers]
        assert all(400 <= a.status_code < 500 for a in answers[8:])
        sizes += [a.json()["batch_size"] for a in answers[:8]]
        if max(sizes) > 1:
            break
    assert max(sizes) > 1, "good and bad images never shared a batch"


def test_health_answers_a_load_balancer_without_a_key(served):
    resp = requests.get(f"{served.url}/health", timeout=10)
    assert resp.status_code == 200 and resp.json()["models"]["clead"]["ready"] >= 1
    refused = requests.post(f"{served.url}/predictions/clead", data=good(1)[0], timeout=10)
    # TorchServe 0.12 answers a missing key with 400 InvalidKeyException: predictions still need it.
    assert refused.status_code == 400 and refused.json()["type"] == "InvalidKeyException"


def test_every_port_listens_on_loopback_only(served):
    record = read_record(served.workdir)
    procs = [psutil.Process(record["front_pid"])] + [p for p in psutil.process_iter()
                                                     if safe_pgid(p.pid) == record["pgid"]]
    listening = [c.laddr for p in procs for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    assert len(listening) >= 6, listening  # front, inference, management, metrics, 2x gRPC
    assert all(is_loopback(addr.ip) for addr in listening), listening


def is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    return (addr.ipv4_mapped or addr).is_loopback if addr.version == 6 else addr.is_loopback


def safe_pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def test_a_worker_killed_under_load_costs_no_request(served):
    before = worker_pids(served)
    images = good(16)
    statuses: list[int] = []
    killed = threading.Event()

    def one(i: int) -> int:
        if i == 120:
            os.kill(before[0], signal.SIGKILL)
            killed.set()
        resp = predict(served, images[i % len(images)])
        return resp.status_code

    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(one, range(400)))
    assert killed.is_set()
    assert statuses.count(200) == 400, {s: statuses.count(s) for s in set(statuses)}
    deadline = time.monotonic() + 30
    while not worker_pids(served) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert worker_pids(served) and worker_pids(served) != before


def wait_answering(server, timeout_s: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        try:
            if predict(server, good(1)[0]).status_code == 200:
                return time.monotonic() - started
        except (requests.ConnectionError, KeyError):
            pass
        time.sleep(0.1)
    pytest.fail(f"not answering {timeout_s:.0f}s after the kill:\n{server.output()}")


def wait_for_line(server, text: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in server.output() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert text in server.output(), server.output()


def test_a_killed_front_is_restarted(served):
    old = read_record(served.workdir)["front_pid"]
    os.kill(old, signal.SIGKILL)
    started = time.monotonic()
    # Sent at once, never retried: `up` holds the listening socket, so the connection waits in the
    # backlog for the restarted front instead of being refused.
    assert predict(served, good(1)[0]).status_code == 200
    recovered = time.monotonic() - started
    assert read_record(served.workdir)["front_pid"] != old
    assert recovered < 10, recovered
    assert served.proc.poll() is None and "the front exited (killed by SIGKILL); restart 1/5" in served.output()


def test_a_killed_torchserve_is_restarted(served):
    record = read_record(served.workdir)
    old_key = read_keys(served.workdir)["inference"]
    java = [p for p in psutil.process_iter(["name"]) if safe_pgid(p.pid) == record["pgid"] and "java" in p.info["name"]]
    assert java
    java[0].kill()
    wait_answering(served, 200)
    wait_for_line(served, "TorchServe is back", 60)
    assert read_keys(served.workdir)["inference"] != old_key  # TorchServe wrote new keys...
    renewed = requests.post(f"{served.url}/predictions/clead", data=good(1)[0], timeout=60,
                            headers={"Content-Type": "image/png", "Authorization": f"Bearer {old_key}"})
    assert renewed.status_code == 200, "...and the front renews the old one for a client that still holds it"
    assert read_record(served.workdir)["pid"] != record["pid"]
    assert served.proc.poll() is None and "TorchServe exited (exit code 0)" in served.output()
    assert requests.get(f"{served.url}/health", timeout=10).status_code == 200


def test_up_still_stops_cleanly_after_the_restarts(served):
    pgid = read_record(served.workdir)["pgid"]
    assert served.interrupt() == 0, served.output()
    assert not [p for p in psutil.process_iter() if safe_pgid(p.pid) == pgid]
    assert read_record(served.workdir) is None
    assert predict_is_refused(served)


def predict_is_refused(server) -> bool:
    try:
        requests.get(f"{server.url}/health", timeout=2)
    except requests.ConnectionError:
        return True
    return False


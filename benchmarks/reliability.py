"""``make reliability``: the real stack on loopback, under load, faults and hostile clients;
writes ``docs/reliability.md`` with every number it measured.

    python -m benchmarks.reliability [--out docs/reliability.md] [--scale 1.0] [--engines torchserve,triton]

One ``clead-serve up`` (front + TorchServe, the shipped models unless ``--model``) is started
the way a user starts it, then, in order:

1. load: ``--requests`` predictions at ``--concurrency``; all must be 200;
2. soak: ``--soak`` predictions; RSS of the front, TorchServe's frontend (java) and the model
   workers after warm-up (the first 10%) and at the end;
3. hostile input: 300 generated hostile images (``tests/serving/fuzzimages.py``), one by one:
   statuses, and whether the worker PIDs changed;
4. faults, each during a load at concurrency 16, with a probe every 100 ms: SIGKILL of a model
   worker, of the front, of TorchServe's java; requests lost (any answer but 200, any
   connection error) and recovery time (the kill to the first 200 of a probe sent after it);
5. slow clients (connections stalled in their headers or body) beside normal traffic;
6. overload: concurrency above the front's ``max_inflight``, and more connections than
   ``max_connections``;
7. once it is stopped, ``clead-serve triton`` with the same models: the fault check of 4. with
   its ``tritonserver`` SIGKILLed (``benchmarks/reliability_triton.py``); "not run", with the
   reason, where there is no Triton environment.

The load generator does not retry (each request is sent once): a loss here is a loss at the
public port, whatever a retrying client (``serving.client``) would have hidden.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Protocol

import numpy as np
import psutil

if TYPE_CHECKING:
    from serving.front import FrontConfig

REPO = Path(__file__).resolve().parents[1]


# -- the stack ------------------------------------------------------------------------------
class Stack:
    """``clead-serve up`` in a subprocess, with its ports, keys and process IDs."""

    def __init__(self, models: list[str], workdir: Path, timeout_s: float = 400) -> None:
        from serving.torchserve import free_port

        self.workdir = workdir
        self.ports = {flag: free_port() for flag in ("--inference-port", "--management-port", "--metrics-port",
                                                     "--grpc-inference-port", "--grpc-management-port")}
        cmd = [sys.executable, "-m", "serving.cli", "up", "--workdir", str(workdir), "--timeout", str(timeout_s)]
        for spec in models:
            cmd += ["--model", spec]
        for flag, port in self.ports.items():
            cmd += [flag, str(port)]
        self.lines: list[str] = []
        ready = threading.Event()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)

        def read() -> None:
            for line in self.proc.stdout:
                self.lines.append(line)
                if "press Ctrl-C to stop" in line:
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        self.started = time.monotonic()
        while not ready.wait(0.5):
            if self.proc.poll() is not None or time.monotonic() - self.started > timeout_s:
                self.stop()
                raise RuntimeError("clead-serve up did not get ready:\n" + "".join(self.lines[-40:]))
        self.startup_s = time.monotonic() - self.started
        self.port = self.ports["--inference-port"]
        self.models = [spec.split("=", 1)[0] for spec in models]

    def record(self) -> dict:
        from serving.torchserve import read_record

        return read_record(self.workdir) or {}

    def key(self, kind: str = "inference") -> str:
        from serving.torchserve import read_keys

        return read_keys(self.workdir).get(kind, "")

    def workers(self, model: str) -> list[dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.ports["--management-port"], timeout=5)
        try:
            conn.request("GET", f"/models/{model}", headers={"Authorization": f"Bearer {self.key('management')}"})
            resp = conn.getresponse()
            data = resp.read()
            return json.loads(data)[0].get("workers", []) if resp.status == 200 else []
        except (OSError, ValueError, http.client.HTTPException):
            return []
        finally:
            conn.close()

    def worker_pids(self) -> list[int]:
        return sorted(w["pid"] for m in self.models for w in self.workers(m) if w.get("status") == "READY")

    def java_pid(self) -> int | None:
        pgid = self.record().get("pgid")
        for proc in psutil.process_iter(["name"]):
            try:
                if os.getpgid(proc.pid) == pgid and "java" in (proc.info["name"] or ""):
                    return proc.pid
            except (ProcessLookupError, psutil.NoSuchProcess):
                continue
        return None

    def rss_mb(self) -> dict[str, float]:
        pids = {"front": self.record().get("front_pid"), "torchserve (java)": self.java_pid()}
        for i, pid in enumerate(self.worker_pids()):
            pids[f"worker {i + 1}"] = pid
        out = {}
        for name, pid in pids.items():
            try:
                out[name] = psutil.Process(pid).memory_info().rss / 2**20
            except (psutil.NoSuchProcess, TypeError, ValueError):
                out[name] = float("nan")
        return out

    def events_since(self, n: int) -> list[str]:
        """What ``up``'s supervisor logged (deaths, restarts) since line ``n`` of the output."""
        return [line.strip() for line in self.lines[n:] if "supervisor:" in line]

    def stop(self) -> None:
        from serving.torchserve import stop_instance

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        stop_instance(self.workdir, timeout_s=30)


# -- load -----------------------------------------------------------------------------------
@dataclass
class Result:
    start: float
    end: float
    status: int | str  # HTTP status, or the exception's name
    retry_after: str | None = None


class Answer(NamedTuple):
    status: int | str  # 200 only for a prediction
    retry_after: str | None = None
    will_close: bool = False  # the server closes the connection after this answer


class Prediction(Protocol):
    """How one engine is sent one prediction at its public port, once (never retried)."""

    port: int

    def send(self, conn: http.client.HTTPConnection, image: bytes) -> Answer: ...


class TorchServePrediction:
    """``POST /predictions/<model>`` at the front, the image as the body, with the inference key."""

    def __init__(self, stack: Stack, model: str = "clead") -> None:
        self.stack, self.model, self.port = stack, model, stack.port
        self.key_cache = (0.0, "")

    def key(self) -> str:
        # A real client re-reads the key file (TorchServe writes new keys when it restarts);
        # at most twice a second here, to keep the generator cheap.
        at, key = self.key_cache
        if time.monotonic() - at > 0.5:
            key = self.stack.key()
            self.key_cache = (time.monotonic(), key)
        return key

    def send(self, conn: http.client.HTTPConnection, image: bytes) -> Answer:
        conn.request("POST", f"/predictions/{self.model}", image,
                     {"Content-Type": "application/octet-stream", "Authorization": f"Bearer {self.key()}"})
        resp = conn.getresponse()
        resp.read()
        return Answer(resp.status, resp.getheader("Retry-After"), resp.will_close)


@dataclass
class Load:
    """A closed-loop load of ``n`` predictions at ``concurrency``; one connection per thread,
    reopened after any error; never retried. With ``pause_after_failure_s``, a thread whose
    request failed waits that long before its next one (a new request, not a retry), so that an
    engine that refuses connections for a while does not use up the whole load in no time."""

    request: Prediction
    bodies: list[bytes]
    n: int
    concurrency: int
    timeout_s: float = 60.0
    pause_after_failure_s: float = 0.0
    results: list[Result] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.counter = itertools.count()
        self.done = 0

    def worker(self) -> None:
        conn = None
        while (i := next(self.counter)) < self.n:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.request.port, timeout=self.timeout_s)
            t0 = time.monotonic()
            try:
                answer = self.request.send(conn, self.bodies[i % len(self.bodies)])
                result = Result(t0, time.monotonic(), answer.status, answer.retry_after)
                if answer.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                result = Result(t0, time.monotonic(), type(exc).__name__)
                conn.close()
                conn = None
            self.results.append(result)
            self.done += 1
            if result.status != 200 and self.pause_after_failure_s:
                time.sleep(self.pause_after_failure_s)
        if conn is not None:
            conn.close()

    def run(self) -> "Load":
        threads = [threading.Thread(target=self.worker, daemon=True) for _ in range(self.concurrency)]
        self.wall0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.wall = time.monotonic() - self.wall0
        return self

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()
        return thread

    def summary(self) -> dict:
        statuses = Counter(str(r.status) for r in self.results)
        lat = np.array([r.end - r.start for r in self.results]) * 1000
        return {"requests": len(self.results), "concurrency": self.concurrency, "statuses": dict(statuses),
                "ok": statuses.get("200", 0), "rps": len(self.results) / self.wall,
                "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
                "max_ms": float(lat.max())}


def images(n: int) -> list[bytes]:
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), "RGB").save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


# -- the checks -----------------------------------------------------------------------------
def check_load(stack: Stack, bodies: list[bytes], n: int, concurrency: int) -> dict:
    Load(TorchServePrediction(stack), bodies, min(n, 200), concurrency).run()  # warm-up
    return Load(TorchServePrediction(stack), bodies, n, concurrency).run().summary()


def check_soak(stack: Stack, bodies: list[bytes], n: int, concurrency: int) -> dict:
    load = Load(TorchServePrediction(stack), bodies, n, concurrency)
    thread = load.start()
    while load.done < n // 10 and thread.is_alive():
        time.sleep(0.2)
    warm = stack.rss_mb()
    thread.join()
    end = stack.rss_mb()
    growth = {k: 100 * (end[k] - warm[k]) / warm[k] for k in warm if k in end and warm[k] == warm[k]}
    return {**load.summary(), "rss_warm_mb": warm, "rss_end_mb": end, "rss_growth_pct": growth}


def check_fuzz(stack: Stack, cases: int) -> dict:
    from hypothesis import HealthCheck, given, settings

    from tests.serving.fuzzimages import hostile_images

    before = stack.worker_pids()
    statuses: Counter = Counter()
    request = TorchServePrediction(stack)
    conn = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=60)

    @settings(max_examples=cases, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(hostile_images())
    def one(data: bytes) -> None:
        nonlocal conn
        try:
            answer = request.send(conn, data)
            statuses[str(answer.status)] += 1
            if answer.will_close:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=60)
        except (OSError, http.client.HTTPException) as exc:
            statuses[type(exc).__name__] += 1
            conn = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=60)

    one()
    five_xx = sum(v for k, v in statuses.items() if not (k.isdigit() and int(k) < 500))
    return {"cases": sum(statuses.values()), "statuses": dict(statuses), "not_200_or_4xx": five_xx,
            "worker_pids_unchanged": stack.worker_pids() == before}


@dataclass
class ClientLoad:
    """``n`` predictions at ``concurrency`` through one of the project's own clients
    (``serving.client``, with its default retry policy): what a caller that uses it loses to a
    fault. A prediction counts as lost when the client gives up on it. ``make_client`` makes
    one client per thread (``TorchServeClient`` or ``TritonClient``)."""

    make_client: Callable[[], Any]
    bodies: list[bytes]
    n: int
    concurrency: int = 4
    model: str = "clead"
    results: list[Result] = field(default_factory=list)  # status: 200, or the name of what was raised

    def run(self) -> None:
        counter = itertools.count()

        def worker() -> None:
            client = self.make_client()
            while (i := next(counter)) < self.n:
                t0 = time.monotonic()
                try:
                    client.predict(self.bodies[i % len(self.bodies)], self.model)
                    outcome: int | str = 200
                except Exception as exc:  # noqa: BLE001 - every way of giving up is a loss to count
                    outcome = type(exc).__name__
                self.results.append(Result(t0, time.monotonic(), outcome))

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(self.concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()
        return thread

    def summary(self, killed_at: float) -> dict:
        lost = Counter(str(r.status) for r in self.results if r.status != 200)
        if len(self.results) < self.n:  # a client load in another process that died or never answered
            lost["no result"] = self.n - len(self.results)
        return {"requests": self.n, "ok": sum(r.status == 200 for r in self.results), "lost": dict(lost),
                "ended_after_kill": sum(r.end > killed_at for r in self.results)}


def torchserve_client_load(stack: Stack, bodies: list[bytes], n: int) -> ClientLoad:
    from serving.client import TorchServeClient
    from serving.torchserve import KEY_FILE

    url, key_file = f"http://127.0.0.1:{stack.port}", stack.workdir / KEY_FILE
    return ClientLoad(lambda: TorchServeClient(url, key_file=key_file), bodies, n)


class Probe:
    """A fresh connection every 100 ms: when does the service answer again after a kill?"""

    def __init__(self, request: Prediction) -> None:
        self.request, self.results, self.stop = request, [], threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.body = images(1)[0]

    def run(self) -> None:
        while not self.stop.wait(0.1):
            t0 = time.monotonic()
            conn = http.client.HTTPConnection("127.0.0.1", self.request.port, timeout=30)
            try:
                status = self.request.send(conn, self.body).status
            except (OSError, http.client.HTTPException) as exc:
                status = type(exc).__name__
            finally:
                conn.close()
            self.results.append(Result(t0, time.monotonic(), status))

    def recovery_s(self, killed_at: float) -> float | None:
        after = [r.end for r in self.results if r.start > killed_at and r.status == 200]
        return min(after) - killed_at if after else None


class Server(Protocol):
    """What ``check_fault`` reads of the server it hurts: its output, and what it logged about the kill."""

    lines: list[str]

    def events_since(self, n: int) -> list[str]: ...


# A failed request of a fault's load makes its thread wait this long before the next one: an
# engine that refuses connections while it restarts (Triton; nothing holds its port) would
# otherwise use up the rest of the load in refused connections before it is back.
FAULT_PAUSE_S = 0.5


def check_fault(server: Server, request: Prediction, client_load: ClientLoad, what: str,
                pid_of: Callable[[], int | None], bodies: list[bytes], n: int, settle_s: float) -> dict:
    """SIGKILL the process ``pid_of()`` (``what``) a quarter into a load of ``n`` requests at
    concurrency 16, with ``client_load`` beside it and a probe every 100 ms."""
    load = Load(request, bodies, n, 16, pause_after_failure_s=FAULT_PAUSE_S)
    probe = Probe(request)
    lines_before = len(server.lines)
    client_thread = client_load.start()  # first: a client load in another process returns once it is going
    thread = load.start()
    probe.thread.start()
    while load.done < n // 4 and thread.is_alive():
        time.sleep(0.05)
    pid = pid_of()
    if pid is None:
        raise RuntimeError(f"no {what} process to kill")
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    thread.join()
    client_thread.join()
    deadline = time.monotonic() + settle_s
    while probe.recovery_s(killed_at) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    probe.stop.set()
    probe.thread.join()
    summary = load.summary()
    in_flight_or_later = [r for r in load.results if r.end > killed_at]
    return {"killed": what, "pid": pid, **summary, "lost": summary["requests"] - summary["ok"],
            "requests_after_kill": len(in_flight_or_later), "recovery_s": probe.recovery_s(killed_at),
            "client": client_load.summary(killed_at), "supervisor": server.events_since(lines_before)}


def check_torchserve_fault(stack: Stack, bodies: list[bytes], what: str, n: int, settle_s: float) -> dict:
    """``what``: "model worker", "front" or "TorchServe (java)"."""
    pid_of = {"model worker": lambda: stack.worker_pids()[0], "front": lambda: stack.record()["front_pid"],
              "TorchServe (java)": stack.java_pid}[what]
    return check_fault(stack, TorchServePrediction(stack), torchserve_client_load(stack, bodies, n // 4), what,
                       pid_of, bodies, n, settle_s)


def check_slow_clients(stack: Stack, bodies: list[bytes], stalled: int, n: int) -> dict:
    baseline = Load(TorchServePrediction(stack), bodies, n, 8).run().summary()
    socks, opened = [], time.monotonic()
    for i in range(stalled):
        sock = socket.create_connection(("127.0.0.1", stack.port))
        if i % 2:  # half stall in their headers, half in their body
            sock.sendall(b"POST /predictions/clead HTTP/1.1\r\nHost: x\r\nContent-Ty")
        else:
            sock.sendall(b"POST /predictions/clead HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                         b"Content-Length: 100000\r\n\r\n\x89PNG\r\n\x1a\n")
        socks.append(sock)
    closed_after: dict[str, list[float]] = {"headers": [], "body": []}
    answers: Counter = Counter()

    def wait_closed(i: int, sock: socket.socket) -> None:  # one thread each: every close is timed as it happens
        sock.settimeout(120)
        data = b""
        try:
            while chunk := sock.recv(4096):
                data += chunk
        except OSError:
            pass
        closed_after["headers" if i % 2 else "body"].append(time.monotonic() - opened)
        answers[data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/") else "closed"] += 1
        sock.close()

    waiters = [threading.Thread(target=wait_closed, args=(i, sock), daemon=True) for i, sock in enumerate(socks)]
    for t in waiters:
        t.start()
    during = Load(TorchServePrediction(stack), bodies, n, 8).run().summary()  # beside the stalled clients
    for t in waiters:
        t.join()
    return {"stalled_connections": stalled, "baseline": baseline, "during": during, "stalled_answers": dict(answers),
            "stalled_closed_after_s": {k: {"min": min(v), "max": max(v)} for k, v in closed_after.items()}}


def check_overload(stack: Stack, bodies: list[bytes], n: int, concurrency: int, connections: int) -> dict:
    over = Load(TorchServePrediction(stack), bodies, n, concurrency).run()
    busy = [r for r in over.results if r.status == 503]
    busy_ms = np.array([r.end - r.start for r in busy]) * 1000 if busy else np.array([0.0])
    idle = []
    for _ in range(connections):
        try:
            idle.append(socket.create_connection(("127.0.0.1", stack.port), timeout=5))
        except OSError:
            break
    time.sleep(0.5)
    t0 = time.monotonic()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=10)
        conn.request("GET", "/health")
        resp = conn.getresponse()
        excess = {"status": resp.status, "retry_after": resp.getheader("Retry-After"),
                  "ms": 1000 * (time.monotonic() - t0)}
        conn.close()
    except (OSError, http.client.HTTPException) as exc:
        excess = {"status": type(exc).__name__, "ms": 1000 * (time.monotonic() - t0)}
    for sock in idle:
        sock.close()
    return {**over.summary(), "busy_503": len(busy), "busy_with_retry_after": sum(bool(r.retry_after) for r in busy),
            "busy_p99_ms": float(np.percentile(busy_ms, 99)), "idle_connections_opened": len(idle),
            "excess_connection": excess}


# -- report ---------------------------------------------------------------------------------
def fmt_statuses(statuses: dict) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items()))


ENGINES = ("torchserve", "triton")  # torchserve: every check but the Triton kill; triton: the Triton kill


def render(r: dict) -> str:
    """The report page: one section per check, in the order ``make reliability`` runs them; a run
    of one engine only (``--engines``) has that engine's sections."""
    from serving.front import FrontConfig

    fc = FrontConfig()
    torchserve = "load" in r
    lines = [
        *_intro(r), *(_load_held(r["load"], r["soak"]) if torchserve else []), *_faults(r["faults"]), "",
        *(_slow_clients(r["slow"], fc) + _overload(r["overload"], fc) + _hostile_input(r["fuzz"]) if torchserve else []),
        _startup(r),
        "",
        SYSTEMD,
    ]
    return "\n".join(lines)


def _intro(r: dict) -> list[str]:
    engines = r.get("engines", list(ENGINES))
    partial = {"torchserve": "TorchServe's checks, without the Triton kill",
               "triton": "the Triton kill; TorchServe's sections (load, soak, its faults, slow clients, overload, "
                         "hostile input) are not on this page"}
    return [
        "# Reliability: load, faults and hostile clients against the real stack",
        "",
        f"Generated by `{r['command']}` (`make reliability`) on {r['date']}, git {r['git']}, "
        f"{r['machine']}; {r['wall_min']:.1f} minutes in all. Models: {', '.join(r['models'])}. "
        f"Everything runs on loopback, started as a user starts it: {_servers(engines)}. The load generator "
        "(`benchmarks/reliability.py`) sends every request once and never retries, so a loss counted here is a "
        "loss at the public port. " + _machine_load(r.get("loadavg")),
        "",
        *([f"**Scaled run** (`--scale {r['scale']}`): every request count below is {r['scale']} times the full "
           "run's (load 5,000 at concurrency 64, soak 20,000, faults 1,500 each); the full run is `make reliability`."
           , ""] if r["scale"] != 1 else []),
        *([f"**Partial run** (`--engines {','.join(engines)}`): only {partial[engines[0]]}; the full run is "
           "`make reliability`.", ""] if len(engines) == 1 else []),
    ]


def _servers(engines: list[str]) -> str:
    servers = {"torchserve": "`clead-serve up` (front + TorchServe 0.12, token auth on)",
               "triton": "`clead-serve triton` (PyTriton) for the Triton kill"}
    return ", then, once it was stopped, ".join(servers[e] for e in engines)


def _startup(r: dict) -> str:
    triton = next((f for f in r["faults"] if "startup_s" in f), None)
    ready = [(cmd, at["startup_s"]) for cmd, at in (("up", r), ("triton", triton)) if at and "startup_s" in at]
    return "Startup: " + "; ".join(f"`clead-serve {cmd}` was ready {t:.0f} s after it was started"
                                   for cmd, t in ready) + "." if ready else ""


def _machine_load(loadavg: list[float] | None) -> str:
    """What else ran on the machine, as far as the load average tells (its rates depend on it)."""
    if not loadavg:
        return "The machine may have been shared with other jobs, so the rates are what it gave then."
    before, after = loadavg[0], loadavg[-1]
    return (f"The 1-minute load average was {before:.2f} when the run started and {after:.2f} when it ended "
            f"(a load that the run's own servers raise), so the rates are what this machine gave then.")


def _load_held(L: dict, S: dict) -> list[str]:
    lines = [
        "## Load held",
        "",
        "| run | requests | concurrency | answers | req/s | p50 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|---|---|",
        f"| load | {L['requests']} | {L['concurrency']} | {fmt_statuses(L['statuses'])} | {L['rps']:.0f} | "
        f"{L['p50_ms']:.0f} | {L['p99_ms']:.0f} | {L['max_ms']:.0f} |",
        f"| soak | {S['requests']} | {S['concurrency']} | {fmt_statuses(S['statuses'])} | {S['rps']:.0f} | "
        f"{S['p50_ms']:.0f} | {S['p99_ms']:.0f} | {S['max_ms']:.0f} |",
        "",
        "Memory over the soak (RSS after the first 10% of the soak, i.e. after warm-up, and at its end; "
        "target: < 10% growth):",
        "",
        "| process | warm MB | end MB | growth |",
        "|---|---|---|---|",
    ]
    for name, warm in S["rss_warm_mb"].items():
        end = S["rss_end_mb"].get(name, float("nan"))
        lines.append(f"| {name} | {warm:.0f} | {end:.0f} | {S['rss_growth_pct'].get(name, float('nan')):+.1f}% |")
    return lines


def _faults(faults: list[dict]) -> list[str]:
    lines = [
        "",
        "## Faults injected",
        "",
        "Each during a load at concurrency 16 (killed a quarter of the way in, SIGKILL), with a probe "
        "(a fresh connection every 100 ms). *Lost*: requests of the load answered with anything but 200, "
        f"or failed at the connection (target 0); a load connection whose request failed waits {FAULT_PAUSE_S} s "
        "before its next request. *Recovery*: from the kill to the first 200 of a probe "
        "sent after it (target < 10 s). *Through the client*: a second load beside it (a quarter as many "
        "requests, concurrency 4) sent with `serving.client.TorchServeClient` and its default retry policy "
        "(connection errors, 502, 503 and 507; 5 tries within 20 s), for Triton with `serving.client.TritonClient` "
        "and its default (`TRITON_RETRY`: connection errors, 503, and the 404s of a restarted Triton that has not "
        "loaded the model yet; 12 tries within 20 s): the predictions it gave up on.",
        "",
        "| killed | requests | answers | lost | through the client: lost / sent | recovery s | what happened |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in faults:
        if "not_run" in f:
            lines.append(f"| {f['killed']} | not run | | | | | {f['not_run']} |")
            continue
        rec = f"{f['recovery_s']:.1f}" if f["recovery_s"] is not None else "not within the wait"
        note = "; ".join(f["supervisor"]) or (
            "TorchServe replaced the worker itself; the front retried its batch" if f["killed"] == "model worker"
            else "nothing logged")
        lines.append(f"| {f['killed']} | {f['requests']} | {fmt_statuses(f['statuses'])} | {f['lost']} | "
                     f"{_through_client(f.get('client'))} | {rec} | {note} |")
    triton = next((f for f in faults if "startup_s" in f), None)
    return lines + (["", *_triton_kill(triton)] if triton else [])


def _through_client(client: dict | None) -> str:
    if not client:
        return "not measured"
    lost = sum(client["lost"].values())
    return (f"{lost} / {client['requests']}" + (f" ({fmt_statuses(client['lost'])})" if lost else "")
            + (" (all ended before the kill)" if client.get("ended_after_kill") == 0 else ""))


def _triton_kill(f: dict) -> list[str]:
    return [
        f"**Triton**: `clead-serve triton` (PyTriton) serving the same models, on its own HTTP port, started once "
        f"TorchServe was stopped and warmed up with {f['warmup']['requests']} predictions. Killed: `tritonserver`, the "
        "server binary PyTriton runs, a descendant of the `clead-serve triton` python process; that process stays "
        "(nothing but systemd would start it again): its `serve()` sees Triton dead, and its supervisor "
        "(`serving.supervisor.keep_running`, the same budget as `up`: `--max-restarts` in `--restart-window`) starts "
        f"Triton again with the models reloaded (tritonserver pid {f['pid']}, then {f.get('pid_after')}). Nothing holds "
        "Triton's port meanwhile (there is no front), so the raw-port load (KServe v2 `POST /v2/models/clead/infer`, "
        "the image as base64 JSON) loses what was in flight and what it sent before Triton answered again: cut-off "
        "and refused connections, then 404 while the models load. The client load ran in the Triton environment "
        "(`benchmarks/reliability_triton.py`).",
    ]


def _slow_clients(slow: dict, fc: FrontConfig) -> list[str]:
    return [
        "## Slow clients",
        "",
        f"{slow['stalled_connections']} connections opened and stalled (half inside their headers, half inside "
        f"their body), while {slow['during']['requests']} normal requests ran at concurrency 8:",
        "",
        "| traffic | answers | p50 ms | p99 ms |",
        "|---|---|---|---|",
        f"| before the stalled clients | {fmt_statuses(slow['baseline']['statuses'])} | "
        f"{slow['baseline']['p50_ms']:.0f} | {slow['baseline']['p99_ms']:.0f} |",
        f"| beside them | {fmt_statuses(slow['during']['statuses'])} | {slow['during']['p50_ms']:.0f} | "
        f"{slow['during']['p99_ms']:.0f} |",
        "",
        "The front cut the stalled connections off: those stalled in their headers "
        f"{slow['stalled_closed_after_s']['headers']['min']:.1f}-{slow['stalled_closed_after_s']['headers']['max']:.1f} s "
        "after they opened (header timeout "
        f"{fc.header_timeout_s:.0f} s), those stalled in their body {slow['stalled_closed_after_s']['body']['min']:.1f}-"
        f"{slow['stalled_closed_after_s']['body']['max']:.1f} s after (body timeout {fc.body_timeout_s:.0f} s); what they "
        f"got: {fmt_statuses(slow['stalled_answers'])}. Settings: `serving/front.py` FrontConfig "
        f"(idle timeout {fc.idle_timeout_s:.0f} s), `python -m serving.front --help`.",
        "",
    ]


def _overload(over: dict, fc: FrontConfig) -> list[str]:
    return [
        "## Overload",
        "",
        f"{over['requests']} predictions at concurrency {over['concurrency']}, above the front's queue "
        f"(`max_inflight` = {fc.max_inflight} predictions in flight): answers {fmt_statuses(over['statuses'])}; "
        f"{over['busy_503']} fast 503s ({over['busy_with_retry_after']} with `Retry-After`), p99 "
        f"{over['busy_p99_ms']:.0f} ms; the slowest answer of all took {over['max_ms']:.0f} ms (no request hung or "
        "timed out silently).",
        "",
        f"Connections: {over['idle_connections_opened']} idle connections held open (`max_connections` = "
        f"{fc.max_connections}); one more request got {over['excess_connection']['status']} "
        f"(Retry-After {over['excess_connection'].get('retry_after')}) in {over['excess_connection']['ms']:.0f} ms.",
        "",
    ]


def _hostile_input(fuzz: dict) -> list[str]:
    return [
        "## Hostile input",
        "",
        f"{fuzz['cases']} generated hostile images (random bytes; truncated, bit-flipped and spliced "
        "PNG/JPEG/GIF/WebP/BMP in 16-bit, CMYK, palette+transparency, animated modes; huge declared "
        f"dimensions) sent one by one: {fmt_statuses(fuzz['statuses'])}; answers other than 200 or 4xx: "
        f"{fuzz['not_200_or_4xx']}; model worker PIDs unchanged: {fuzz['worker_pids_unchanged']}. In-process, "
        "`tests/serving/test_fuzz.py` runs 2,150 more against the predictor on every `make test`.",
        "",
    ]


SYSTEMD = """## Running under systemd

`clead-serve up` restarts a dead front or TorchServe itself (with backoff; by default 5 restarts in
10 minutes, `--max-restarts`, `--restart-window`) and then exits with code 1; systemd restarts the
whole stack after that, and owns the boot-time start. A unit (paths to adapt):

```ini
# /etc/systemd/system/clead-serve.service
[Unit]
Description=clead model serving (front + TorchServe)
After=network.target

[Service]
Type=simple
User=clead
WorkingDirectory=/srv/clead
ExecStart=/srv/clead/.venv/bin/clead-serve up --workdir /srv/clead/runs/serve
# SIGTERM: `up` stops the front, then TorchServe (its shutdown hook stops the workers).
KillSignal=SIGTERM
TimeoutStopSec=90
# `up` exits 1 once its own restart budget is spent: then systemd starts it afresh.
Restart=on-failure
RestartSec=10
StartLimitIntervalSec=3600
StartLimitBurst=5
NoNewPrivileges=true
PrivateTmp=true
ProtectSystem=strict
ReadWritePaths=/srv/clead/runs

[Install]
WantedBy=multi-user.target
```

`clead-serve triton` has the same budget (`--max-restarts`, `--restart-window`); its unit differs only
in `ExecStart`.
"""


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def triton_fault(models: list[str], bodies: list[bytes], n: int, settle_s: float) -> dict:
    """The Triton row of the faults table: measured, or why it was not."""
    from benchmarks.reliability_triton import KILLED, check_triton_kill, unavailable

    reason = unavailable()
    if reason:
        return {"killed": KILLED, "not_run": reason}
    try:
        return check_triton_kill(dict(spec.split("=", 1) for spec in models), bodies, n, settle_s)
    except RuntimeError as exc:  # Triton would not start, or its client load would not: the rest still counts
        print(f"reliability: the Triton kill failed: {exc}", file=sys.stderr, flush=True)
        return {"killed": KILLED, "not_run": f"it failed: {str(exc).splitlines()[0]}"}


def engines_arg(value: str) -> list[str]:
    engines = [e.strip() for e in value.split(",") if e.strip()]
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown or not engines:
        raise argparse.ArgumentTypeError(f"unknown engine(s) {unknown}; choose from {', '.join(ENGINES)}")
    return [e for e in ENGINES if e in engines]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reliability", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "reliability.md")
    parser.add_argument("--workdir", type=Path, default=REPO / "runs" / "reliability")
    parser.add_argument("--models-dir", type=Path, default=REPO / "models" / "cifar10")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=ARTIFACT")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every request count (0.1: a quick look)")
    parser.add_argument("--engines", type=engines_arg, default=list(ENGINES),
                        help="comma-separated: torchserve (every check but the Triton kill), triton (the Triton kill)")
    args = parser.parse_args(argv)
    s = args.scale
    models = args.model or [f"{n}={args.models_dir / (n + '.pt')}" for n in ("clead", "baseline")]
    shown = [m.replace(str(REPO) + os.sep, "") for m in models]
    t0 = time.monotonic()
    bodies = images(16)
    flags = (f" --scale {s}" if s != 1 else "") + (f" --engines {','.join(args.engines)}"
                                                   if args.engines != list(ENGINES) else "")
    report: dict = {"command": "python -m benchmarks.reliability" + flags, "engines": args.engines,
                    "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "git": git_commit(),
                    "machine": f"{psutil.cpu_count()} CPU cores, {platform.machine()}, Python {platform.python_version()}",
                    "models": shown, "scale": s, "faults": [],
                    "loadavg": [os.getloadavg()[0]]}  # 1-minute load average before the run (and after it, below)
    if "torchserve" in args.engines:
        run_torchserve(report, models, bodies, args.workdir.resolve(), s)
    if "triton" in args.engines:
        report["faults"].append(triton_fault(models, bodies, max(200, int(1500 * s)), 240))
        print(f"reliability: Triton kill: {json.dumps(report['faults'][-1], default=str)[:400]}", flush=True)
    report["wall_min"] = (time.monotonic() - t0) / 60
    report["loadavg"] = [report["loadavg"][0], os.getloadavg()[0]]
    args.out.write_text(render(report))
    args.workdir.mkdir(parents=True, exist_ok=True)
    (args.workdir / "reliability.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {args.out} ({report['wall_min']:.1f} min)")
    return 0


def run_torchserve(report: dict, models: list[str], bodies: list[bytes], workdir: Path, s: float) -> None:
    """Every check against ``clead-serve up``, into ``report``; the stack is stopped at the end."""
    stack = Stack(models, workdir)
    report["startup_s"] = stack.startup_s
    try:
        steps = [
            ("load", lambda: check_load(stack, bodies, int(5000 * s), 64)),
            ("soak", lambda: check_soak(stack, bodies, int(20000 * s), 32)),
            ("fuzz", lambda: check_fuzz(stack, 300)),
            ("faults", lambda: [check_torchserve_fault(stack, bodies, what, max(200, int(1500 * s)), 240)
                                for what in ("model worker", "front", "TorchServe (java)")]),
            ("slow", lambda: check_slow_clients(stack, bodies, 32, max(100, int(500 * s)))),
            ("overload", lambda: check_overload(stack, bodies, max(500, int(3000 * s)), 192, 300)),
        ]
        for name, step in steps:
            started = time.monotonic()
            report[name] = step()
            print(f"reliability: {name} done in {time.monotonic() - started:.0f}s: "
                  f"{json.dumps(report[name], default=str)[:400]}", flush=True)
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())

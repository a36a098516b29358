"""Run TorchServe for clead models: config.properties, start, readiness, key file, clean stop.

Every instance lives in its own work folder (``runs/serve`` by default)::

    config.properties   generated here
    model_store/        the .mar files
    logs/               LOG_LOCATION / METRICS_LOCATION
    tmp/                TMPDIR and TEMP: TorchServe keeps its PID file and its worker sockets
                        there, so two instances (tests, a second user) never share them
    key_file.json       written by TorchServe (token authorization), mode 0600
    metrics.yaml        metrics_config: TorchServe's default metrics plus the handler's own
                        (serving/handler_metrics.py), served in Prometheus format on the metrics port
    server.json         our record of the running instance, read by ``clead-serve stop``

With the front on (the default), ``serving/front.py`` listens on the inference port and
TorchServe's own inference API moves to an internal loopback port (``upstream_port``).

TorchServe and the front are each started in their own session, so Ctrl-C in the terminal
reaches only us and we stop them in order: SIGTERM to the front, then to TorchServe's frontend,
wait, then kill what is left of either.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

from serving.archive import ArchiveConfig, build_archive

SERVER_RECORD = "server.json"
KEY_FILE = "key_file.json"
METRICS_CONFIG = "metrics.yaml"


class ServerError(RuntimeError):
    """TorchServe could not be started, did not get ready, or is in an unexpected state."""


@dataclass
class ServerConfig:
    """One TorchServe instance. Ports bind to ``host`` only (127.0.0.1: this machine only)."""

    workdir: Path = Path("runs/serve")
    host: str = "127.0.0.1"
    inference_port: int = 8080
    management_port: int = 8081
    metrics_port: int = 8082
    grpc_inference_port: int = 7070  # TorchServe always opens gRPC too; bound to host as well
    grpc_management_port: int = 7071
    token_auth: bool = True  # token authorization on every API (TorchServe cannot split it)
    token_expiration_min: int = 24 * 60  # lifetime of the management / inference keys
    java_heap: str = "1g"  # -Xmx of the frontend; the models live in the Python workers
    archive: ArchiveConfig = field(default_factory=ArchiveConfig)
    # serving.front on inference_port, so curl --data-binary without a Content-Type works
    # (TorchServe would decode such a body as a form); TorchServe then listens on upstream_port.
    front: bool = True
    upstream_port: int = 0  # TorchServe's own inference port behind the front; 0: a free one at start
    # Where the inference port (the front's, or TorchServe's with front=False) and the metrics port
    # listen. 127.0.0.1 keeps them on this machine; a container sets 0.0.0.0 so that its port
    # mapping, Service or probes reach them. Management and gRPC always stay on ``host``.
    public_host: str = "127.0.0.1"
    metrics_host: str = "127.0.0.1"

    @property
    def inference_url(self) -> str:
        """Where clients send predictions: the front, or TorchServe itself without it."""
        return f"http://{self.host}:{self.inference_port}"

    @property
    def torchserve_inference_url(self) -> str:
        if not self.front:
            return self.inference_url
        if not self.upstream_port:
            raise ValueError("upstream_port is not chosen yet (TorchServe() picks a free one)")
        return f"http://{self.host}:{self.upstream_port}"

    @property
    def max_request_bytes(self) -> int:
        # Leave room for multipart framing so the handler's own byte limit answers first,
        # with a message that names the limit. The front enforces the same number.
        return self.archive.limits.max_bytes + 64 * 1024

    def ports(self) -> list[int]:
        ports = [self.inference_port, self.management_port, self.metrics_port,
                 self.grpc_inference_port, self.grpc_management_port]
        return ports + [self.upstream_port] if self.front else ports

    @property
    def management_url(self) -> str:
        return f"http://{self.host}:{self.management_port}"

    def properties(self, model_store: Path, metrics_config: Path | None = None) -> str:
        """config.properties; ``metrics_config`` defaults to ``metrics.yaml`` beside ``model_store``."""
        props = {
            "inference_address": self.torchserve_inference_url if self.front
            else f"http://{self.public_host}:{self.inference_port}",
            "management_address": self.management_url,
            "metrics_address": f"http://{self.metrics_host}:{self.metrics_port}",
            "grpc_inference_address": self.host,
            "grpc_inference_port": self.grpc_inference_port,
            "grpc_management_address": self.host,
            "grpc_management_port": self.grpc_management_port,
            "model_store": model_store,
            "disable_token_authorization": str(not self.token_auth).lower(),
            "token_expiration_min": self.token_expiration_min,
            "enable_model_api": "false",  # no registration of new models over HTTP
            "enable_envvars_config": "false",  # the file is the whole configuration
            "install_py_dep_per_model": "false",  # never pip-install at model load
            # Accept the handler's own metrics (Suspicion*, serving/ts_handler.py) without declaring
            # each in a metrics.yaml; undeclared ones are otherwise only echoed into ts_log.log.
            "model_metrics_auto_detect": "true",
            "max_request_size": self.max_request_bytes,
            "max_response_size": 1024 * 1024,
            "default_workers_per_model": self.archive.workers,
            # Prometheus text on the metrics port (the default, log mode, answers it with an empty body).
            "metrics_mode": "prometheus",
            "metrics_config": metrics_config or Path(model_store).parent / METRICS_CONFIG,
            "vmargs": f"-Xmx{self.java_heap} -XX:+ExitOnOutOfMemoryError",
        }
        return "".join(f"{k}={v}\n" for k, v in props.items())


def free_port(host: str = "127.0.0.1", avoid: Iterable[int] = ()) -> int:
    """A port free on ``host`` now, other than those in ``avoid`` (ports already chosen for
    something that has not bound them yet: the kernel may hand the same one out again)."""
    avoid = set(avoid)
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        if port not in avoid:
            return port
    raise ServerError(f"no free port on {host} outside {sorted(avoid)}")


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((host, port)) == 0


def read_keys(workdir: str | Path) -> dict[str, str]:
    """``{"management": ..., "inference": ..., "api": ...}`` from TorchServe's key file, or {}."""
    path = Path(workdir) / KEY_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}  # TorchServe is still writing it
    return {kind.lower(): entry["key"] for kind, entry in data.items() if isinstance(entry, dict) and "key" in entry}


def sample_png() -> bytes:
    """A small synthetic RGB image, used as the readiness probe and for the printed curl lines."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:32, 0:32]
    pixels = np.stack([x * 8, y * 8, (x + y) * 4], axis=-1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="PNG")
    return buf.getvalue()


class TorchServe:
    """Start, wait for, and stop one TorchServe instance serving ``models`` (name -> artifact)."""

    def __init__(self, models: dict[str, str | Path], config: ServerConfig | None = None) -> None:
        self.models = {name: Path(path) for name, path in models.items()}
        config = config or ServerConfig()
        if config.front and not config.upstream_port:
            # Not one of the ports the config already names (they are not bound yet either).
            config = replace(config, upstream_port=free_port(config.host, avoid=config.ports()))
        self.config = config
        self.workdir = Path(self.config.workdir).resolve()
        self.process: subprocess.Popen | None = None
        self.front: subprocess.Popen | None = None
        self.listener: socket.socket | None = None  # the front's listening socket, held across its restarts

    # -- setup -------------------------------------------------------------------------
    def prepare(self) -> list[Path]:
        """Check prerequisites, build the archives and write config.properties."""
        if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
            raise ServerError("TorchServe needs Java 11+; install it (Debian: apt-get install openjdk-17-jre-headless)")
        if shutil.which("torchserve", path=os.path.dirname(sys.executable)) is None and shutil.which("torchserve") is None:
            raise ServerError("torchserve is not installed; pip install -e '.[serving]'")
        running = read_record(self.workdir)
        if running and pid_alive(running["pid"]):
            raise ServerError(
                f"a TorchServe started from {self.workdir} is still running (pid {running['pid']}); "
                "stop it with `make stop` (clead-serve stop)"
            )
        cfg = self.config
        for port in cfg.ports():
            if port_in_use(cfg.host, port):
                raise ServerError(f"port {port} on {cfg.host} is already in use; choose other ports (see --help)")
        for sub in ("model_store", "logs", "tmp"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        (self.workdir / KEY_FILE).unlink(missing_ok=True)
        archives = [build_archive(path, name, self.workdir / "model_store", config=cfg.archive)
                    for name, path in self.models.items()]
        from serving.handler_metrics import write_metrics_config  # imports the predictor, hence torch

        write_metrics_config(self.workdir / METRICS_CONFIG)
        (self.workdir / "config.properties").write_text(cfg.properties(self.workdir / "model_store"))
        return archives

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        tmp = str(self.workdir / "tmp")
        logs = str(self.workdir / "logs")
        env.update(TMPDIR=tmp, TEMP=tmp, LOG_LOCATION=logs, METRICS_LOCATION=logs)
        env.pop("TS_CONFIG_FILE", None)
        return env

    # -- lifecycle ---------------------------------------------------------------------
    def start(self, timeout_s: float = 180.0) -> None:
        """Start in the background (own session) and return once every model answers."""
        self.prepare()
        self.launch()
        try:
            if self.config.front:
                self.front = self.start_front()
                self.write_record()
            self.wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise

    def launch(self) -> None:
        """TorchServe in its own session: one process group (launcher, java, workers); also a restart."""
        torchserve = shutil.which("torchserve", path=os.path.dirname(sys.executable)) or "torchserve"
        cmd = [
            torchserve, "--start", "--foreground", "--ncs",
            "--ts-config", str(self.workdir / "config.properties"),
            "--model-store", str(self.workdir / "model_store"),
            "--models", *[f"{name}={name}.mar" for name in self.models],
        ]
        # Appended, so a restart keeps the log of what died. cwd = workdir: TorchServe writes
        # key_file.json into its working directory.
        with open(self.workdir / "logs" / "torchserve.out", "ab") as log:
            self.process = subprocess.Popen(cmd, cwd=self.workdir, env=self.env(), stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        self.write_record()

    def write_record(self) -> None:
        record = {"pid": self.process.pid, "pgid": self.process.pid, **self.describe()}
        if self.front is not None:
            record["front_pid"] = self.front.pid
        write_record(self.workdir, record)

    def start_front(self) -> subprocess.Popen:
        """``python -m serving.front`` on the inference port, relaying to TorchServe's own."""
        cfg = self.config
        if self.listener is None:
            # Bound here and handed down (as systemd socket activation does): while a dead front is
            # restarted, new connections wait in the kernel's backlog instead of being refused.
            self.listener = socket.create_server((cfg.public_host, cfg.inference_port), backlog=1024)
        cmd = [sys.executable, "-m", "serving.front", "--host", cfg.public_host, "--port", str(cfg.inference_port),
               "--upstream", cfg.torchserve_inference_url, "--max-request-bytes", str(cfg.max_request_bytes),
               "--management", cfg.management_url,  # /health reads the workers' states there
               "--listen-fd", str(self.listener.fileno())]
        if cfg.token_auth:
            cmd += ["--key-file", str(self.workdir / KEY_FILE)]
        env = dict(os.environ)
        # Importable also when this project runs from a checkout without being installed.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                          env.get("PYTHONPATH")]))
        with open(self.workdir / "logs" / "front.log", "ab") as log:  # appended: restarts keep the history
            return subprocess.Popen(cmd, cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, pass_fds=(self.listener.fileno(),))

    def describe(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "inference_url": cfg.inference_url,
            "torchserve_inference_url": cfg.torchserve_inference_url,
            "front": cfg.front,
            "management_url": cfg.management_url,
            "models": sorted(self.models),
            "token_auth": cfg.token_auth,
            "key_file": str(self.workdir / KEY_FILE) if cfg.token_auth else None,
        }

    def wait_ready(self, timeout_s: float) -> None:
        """``/ping`` is healthy before models load, so poll each model's workers, then predict."""
        from serving.client import TorchServeClient, PredictionError

        deadline = time.monotonic() + timeout_s
        while self.front is not None and not port_in_use(self.config.host, self.config.inference_port):
            self._check_alive()
            if time.monotonic() > deadline:
                raise ServerError(f"the front did not listen on {self.config.inference_url}; {self.log_tail()}")
            time.sleep(0.1)
        if self.config.token_auth:
            while not read_keys(self.workdir):
                self._check_alive()
                if time.monotonic() > deadline:
                    raise ServerError(f"TorchServe wrote no {KEY_FILE} within {timeout_s:.0f}s; {self.log_tail()}")
                time.sleep(0.2)
        client = TorchServeClient(self.config.inference_url, key_file=self.key_file(), timeout=30)
        pending = set(self.models)
        probe = sample_png()
        while pending:
            self._check_alive()
            for name in sorted(pending):
                if self.workers_ready(name):
                    try:
                        client.predict(probe, model=name)
                        pending.discard(name)
                    except PredictionError as err:
                        if err.status != 503:
                            raise ServerError(f"model {name} loaded but answers {err}; {self.log_tail()}") from err
            if pending and time.monotonic() > deadline:
                raise ServerError(f"models {sorted(pending)} not ready within {timeout_s:.0f}s; {self.log_tail()}")
            if pending:
                time.sleep(0.5)

    def key_file(self) -> Path | None:
        return self.workdir / KEY_FILE if self.config.token_auth else None

    def workers_ready(self, name: str) -> bool:
        import requests

        headers = {}
        if self.config.token_auth:
            headers["Authorization"] = f"Bearer {read_keys(self.workdir).get('management', '')}"
        try:
            resp = requests.get(f"{self.config.management_url}/models/{name}", headers=headers, timeout=5)
        except requests.ConnectionError:
            return False
        if resp.status_code != 200:
            return False
        workers = resp.json()[0].get("workers", [])
        return bool(workers) and all(w.get("status") == "READY" for w in workers)

    def _check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise ServerError(f"TorchServe exited with code {self.process.returncode}; {self.log_tail()}")
        if self.front is not None and self.front.poll() is not None:
            raise ServerError(f"the front exited with code {self.front.returncode}; {self.log_tail()}")

    def running(self) -> bool:
        """TorchServe and (when on) the front are both still up."""
        return self.process is not None and self.process.poll() is None and (
            self.front is None or self.front.poll() is None)

    def log_tail(self, lines: int = 30) -> str:
        parts = []
        for name in ("front.log", "torchserve.out", "model_log.log"):
            path = self.workdir / "logs" / name
            if path.is_file():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path} ---\n" + "\n".join(tail))
        return "\n".join(parts) or f"no logs in {self.workdir / 'logs'}"

    def stop(self, timeout_s: float = 60.0) -> None:
        stop_instance(self.workdir, timeout_s)
        for proc in (self.front, self.process):
            if proc is not None:
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
        if self.listener is not None:
            self.listener.close()
            self.listener = None


# -- process record, shared by `up` and `stop` ----------------------------------------------
def write_record(workdir: Path, record: dict[str, Any]) -> None:
    (workdir / SERVER_RECORD).write_text(json.dumps(record, indent=2) + "\n")


def read_record(workdir: str | Path) -> dict[str, Any] | None:
    path = Path(workdir) / SERVER_RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def group_members(pgid: int) -> list[int]:
    """Live processes of the process group we started TorchServe in (launcher, java, workers)."""
    import psutil

    members = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(proc.pid)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return members


def stop_instance(workdir: str | Path, timeout_s: float = 60.0) -> bool:
    """Stop the TorchServe recorded in ``workdir``; returns False if none was running.

    SIGTERM goes to the frontend (java) first: its shutdown hook stops the workers cleanly.
    Whatever of the process group is still alive after ``timeout_s`` is killed.
    """
    workdir = Path(workdir).resolve()
    record = read_record(workdir)
    if not record:
        return False
    # The front first: no new requests reach a TorchServe that is shutting down.
    front_stopped = stop_front(record.get("front_pid"))
    pgid = record["pgid"]
    members = group_members(pgid)
    if not members:
        (workdir / SERVER_RECORD).unlink(missing_ok=True)
        return front_stopped
    import psutil

    launcher = record["pid"]
    frontends = [p for p in members if p != launcher and "java" in _name(p)]
    for pid in frontends or [launcher]:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in group_members(pgid):
        _signal(pid, signal.SIGKILL)
    psutil.wait_procs([p for p in _procs(members)], timeout=5)
    (workdir / SERVER_RECORD).unlink(missing_ok=True)
    return True


def stop_front(pid: int | None, timeout_s: float = 10.0) -> bool:
    """SIGTERM the front recorded as ``pid`` (only if that pid still is a front), kill it if it lingers."""
    import psutil

    try:
        proc = psutil.Process(pid) if pid else None
        if proc is None or "serving.front" not in proc.cmdline() or proc.status() == psutil.STATUS_ZOMBIE:
            return False  # gone, or the pid now belongs to someone else
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    except psutil.NoSuchProcess:
        return False
    return True


def _name(pid: int) -> str:
    import psutil

    try:
        return psutil.Process(pid).name()
    except psutil.NoSuchProcess:
        return ""


def _procs(pids: list[int]) -> list:
    import psutil

    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    return procs


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass

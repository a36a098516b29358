"""Serve the same artifacts with Triton through PyTriton, with Triton's dynamic batching.

Each model takes one input ``image`` (BYTES: the encoded file, exactly what TorchServe gets
as a body) and an optional ``topk`` (INT32; -1 asks for every class and the probability
vector, TorchServe's ``X-TopK: all``), and returns ``result`` (BYTES: the same JSON that
TorchServe answers). Decoding, limits and batching of the forward pass are
:class:`serving.predictor.Predictor`'s, shared with the TorchServe handler.

Triton fails a whole batch when the Python callable raises, so a bad image does not raise:
its ``result`` carries the error JSON (``code``, ``type``, ``message``) and the client turns
it into the same error as TorchServe's 4xx. Run inside the Triton environment
(``serving/tritonenv.py``); ``clead-serve triton`` takes care of that.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np

from serving.predictor import TOPK_ALL, Predictor, RequestError, keep_freed_memory
from serving.settings import TRITON_TOPK_ALL, TritonServeConfig

logger = logging.getLogger(__name__)


def make_infer_fn(predictor: Predictor) -> Callable[[list], list[dict[str, np.ndarray]]]:
    """A PyTriton callable over a list of requests (not ``@batch``: requests differ in topk)."""

    def infer(requests: list) -> list[dict[str, np.ndarray]]:
        payloads, topks, counts = [], [], []
        for request in requests:
            images = request["image"].reshape(-1)
            topk = request.data.get("topk")
            ks = topk.reshape(-1).tolist() if topk is not None else [None] * len(images)
            if len(ks) != len(images):
                ks = [ks[0]] * len(images)
            payloads.extend({"data": _image_bytes(image)} for image in images)
            topks.extend(ks)
            counts.append(len(images))
        checked = [triton_topk(k) for k in topks]
        responses = predictor.predict(payloads, [k for k, _ in checked], [error for _, error in checked])
        outputs, start = [], 0
        for n in counts:
            rows = [[json.dumps(r).encode("utf-8")] for r in responses[start:start + n]]
            outputs.append({"result": np.array(rows, dtype=np.object_)})
            start += n
        return outputs

    return infer


def triton_topk(k: int | None) -> tuple[int | str | None, RequestError | None]:
    """The INT32 ``topk`` as the predictor takes it, or the 400 it gets: ``(topk, error)``.

    ``TRITON_TOPK_ALL`` (-1) is TorchServe's ``X-TopK: all``; any other value under 1 is refused
    here, with a message naming -1, because the predictor's own message knows only ``all``."""
    if k == TRITON_TOPK_ALL:
        return TOPK_ALL, None
    if k is not None and k < 1:
        return None, RequestError(400, f"topk must be at least 1, or {TRITON_TOPK_ALL} for every class "
                                       f"with the probability vector, got {k}")
    return k, None


def _image_bytes(value: Any) -> bytes:
    """The encoded image of one BYTES element: raw (binary tensor data, what tritonclient sends), or
    base64 text, the only way a plain-JSON v2 / Open Inference Protocol request can carry binary.
    An image file is not strict base64 (JPEG and PNG start with non-ASCII bytes; GIF, BMP and WebP
    headers hold binary sizes), so a raw file is not mistaken for base64 text."""
    raw = _raw_bytes(value)
    if raw.isascii():
        try:
            return base64.b64decode(raw, validate=True)
        except binascii.Error:
            pass
    return raw


def _raw_bytes(value: Any) -> bytes:
    # BYTES tensors arrive as object arrays of bytes; np.bytes_ scalars would drop trailing NULs.
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, np.bytes_):
        return value.tobytes()
    if isinstance(value, str):
        return value.encode("latin-1")
    return bytes(value)


def serve(models: dict[str, str | Path], config: TritonServeConfig | None = None,
          ready: Callable[[], None] | None = None) -> None:
    """Load ``models`` (name -> artifact), serve until SIGINT/SIGTERM, then stop cleanly."""
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    config = config or TritonServeConfig()
    _ensure_libpython_path()
    keep_freed_memory()  # this process runs every model's forward passes (see the function)
    predictors = {
        name: Predictor.from_artifact(str(path), gpu_id=config.gpu_id, name=name, limits=config.limits,
                                     options=config.options)
        for name, path in models.items()
    }
    stop = threading.Event()
    # A Python started in the background by a shell ignores SIGINT; re-arm both signals so
    # Ctrl-C and `kill` stop Triton and its stub processes cleanly.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    triton_config = TritonConfig(
        http_address=config.host, http_port=config.http_port,
        grpc_address=config.host, grpc_port=config.grpc_port,
        metrics_port=config.metrics_port, exit_on_error=True,
        # Latency quantiles (nv_inference_request_summary_us{quantile=...}) beside the running totals,
        # so that a p99 can be alerted on (docs/metrics.md).
        metrics_config=["summary_latencies=true"],
    )
    with Triton(config=triton_config) as triton:
        for name, predictor in predictors.items():
            triton.bind(
                model_name=name,
                infer_func=make_infer_fn(predictor),
                inputs=[Tensor(name="image", dtype=np.bytes_, shape=(1,)),
                        Tensor(name="topk", dtype=np.int32, shape=(1,), optional=True)],
                outputs=[Tensor(name="result", dtype=np.bytes_, shape=(1,))],
                config=ModelConfig(
                    max_batch_size=config.max_batch_size,
                    batcher=DynamicBatcher(max_queue_delay_microseconds=config.max_queue_delay_us),
                ),
                strict=False,
            )
        triton.run()
        if ready is not None:
            ready()
        while not stop.wait(0.5) and triton.is_alive():
            pass
    if not stop.is_set():
        left = kill_stray_stubs()
        raise RuntimeError("Triton stopped unexpectedly; see its log above"
                           + (f"; killed {left} stub process{'es' * (left > 1)} it left behind" if left else ""))
    logger.info("Triton stopped")


def kill_stray_stubs() -> int:
    """Kill the Python-backend stubs (and their processes) that a dead tritonserver left behind;
    returns how many stubs. A stub serving a request when tritonserver is SIGKILLed waits for it
    forever (about 100 MB and a shared-memory region each, one per crash): found by the
    shared-memory name PyTriton gives every Triton this process starts (``pytrtion<pid>-...``).
    Each stub's multiprocessing resource tracker is left to exit by itself: it then unlinks the
    shared memory the stub's Python side had made; the stub's own region is unlinked here."""
    import psutil

    prefix = f"pytrtion{os.getpid()}-"
    stubs = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if cmdline and cmdline[0].endswith("triton_python_backend_stub") and any(a.startswith(prefix) for a in cmdline):
            stubs.append((proc, next(a for a in cmdline if a.startswith(prefix))))
    doomed = []
    for stub, _ in stubs:
        try:
            doomed += [stub] + [c for c in stub.children(recursive=True)
                                if "multiprocessing.resource_tracker" not in " ".join(c.cmdline())]
        except psutil.NoSuchProcess:
            continue
    for proc in doomed:  # not waited for: they are not our children, and the next Triton needs nothing of theirs
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    for _, region in stubs:
        Path("/dev/shm", region).unlink(missing_ok=True)
    return len(stubs)


def _ensure_libpython_path() -> None:
    """The bundled Triton's Python stub must load this interpreter's libpython, not the system's."""
    import sysconfig

    libdir = sysconfig.get_config_var("LIBDIR")
    current = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    if libdir and libdir not in current:
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join([libdir, *current])


class TritonProcess:
    """``clead-serve triton`` in a child process (own session): a start/stop context manager.

    For callers in the main environment (benchmarks, scripts): the CLI re-executes itself in
    the Triton venv. ``with TritonProcess(models, config) as server: ... server.url``.
    """

    READY_LINE = "Triton is ready"

    def __init__(self, models: dict[str, str | Path], config: TritonServeConfig | None = None,
                 timeout_s: float = 300.0) -> None:
        self.models = {name: Path(path) for name, path in models.items()}
        self.config = config or TritonServeConfig()
        self.timeout_s = timeout_s
        self.lines: list[str] = []
        self.process = None

    @property
    def url(self) -> str:
        return f"{self.config.host}:{self.config.http_port}"

    def command(self) -> list[str]:
        import sys

        c = self.config
        cmd = [sys.executable, "-m", "serving.cli", "triton", "--host", c.host, "--http-port", str(c.http_port),
               "--grpc-port", str(c.grpc_port), "--metrics-port", str(c.metrics_port),
               "--max-batch-size", str(c.max_batch_size), "--max-queue-delay-us", str(c.max_queue_delay_us),
               "--max-bytes", str(c.limits.max_bytes), "--max-pixels", str(c.limits.max_pixels)]
        for name, path in self.models.items():
            cmd += ["--model", f"{name}={path.resolve()}"]
        return cmd + (["--bf16"] if c.options.bf16 else [])

    def start(self) -> "TritonProcess":
        import subprocess
        import time

        from serving.tritonenv import REPO_ROOT

        ready = threading.Event()
        self.process = subprocess.Popen(self.command(), cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, start_new_session=True)

        def read() -> None:
            for line in self.process.stdout:
                self.lines.append(line)
                if self.READY_LINE in line:
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + self.timeout_s
        while not ready.wait(0.5):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Triton did not get ready (exit {self.process.returncode}):\n"
                                   + "".join(self.lines[-40:]))
        return self

    def stop(self, timeout_s: float = 60.0) -> None:
        """SIGINT (what Ctrl-C sends: ``serve`` stops Triton and its stubs), then SIGKILL the group."""
        import subprocess

        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def __enter__(self) -> "TritonProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

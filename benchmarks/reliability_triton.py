"""The Triton kill of ``make reliability`` (``benchmarks/reliability.py``): ``clead-serve triton``
serving the same models, its ``tritonserver`` SIGKILLed under load, measured with the same
load, probe and fault bookkeeping as the TorchServe kills.

What is killed is the server binary PyTriton runs, a descendant of the ``clead-serve triton``
python process; that process stays: its ``serve()`` sees Triton dead and its supervisor
(``serving.supervisor.keep_running``) starts Triton again with the models reloaded. (Killing the
python process itself would end the service: only systemd would start it again.)

``TritonClient`` needs ``tritonclient``, which only the Triton environment has, so the load
through the client runs there, in a subprocess: this module's ``main``::

    <Triton venv>/bin/python -m benchmarks.reliability_triton --url 127.0.0.1:8000 --requests 375

prints ``ready`` once its clients are made, starts on a line on stdin, and prints every
prediction's ``[start, end, outcome]`` (monotonic clock, shared with the parent) as JSON.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from benchmarks.reliability import REPO, Answer, ClientLoad, Load, Result, check_fault, images

KILLED = "Triton (tritonserver)"


def unavailable() -> str | None:
    """Why the Triton kill cannot run here (no Triton environment), or None."""
    from serving.tritonenv import has_pytriton, venv_dir, venv_python

    if has_pytriton() or venv_python(venv_dir()).exists():
        return None
    return ("this machine has no Triton environment (`.venv-triton` or `$CLEAD_TRITON_VENV`, made by the first "
            "`clead-serve triton`), and the report does not install one. `clead-serve triton` restarts a Triton "
            "that died (`tests/serving/test_supervisor.py`; a real kill in `tests/serving/test_servers.py`), "
            "and `serving.client.TritonClient` rides the restart out")


class TritonStack:
    """``clead-serve triton`` (``serving.triton.TritonProcess``) on free loopback ports."""

    def __init__(self, models: dict[str, Path], timeout_s: float = 300.0) -> None:
        from serving.settings import TritonServeConfig
        from serving.torchserve import free_port
        from serving.triton import TritonProcess

        config = TritonServeConfig(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
        started = time.monotonic()
        self.server = TritonProcess(models, config, timeout_s).start()
        self.startup_s = time.monotonic() - started
        self.port = config.http_port
        self.url = f"127.0.0.1:{self.port}"
        self.lines = self.server.lines

    def tritonserver_pid(self) -> int | None:
        """The Triton binary among the descendants of ``clead-serve triton`` (PyTriton starts it
        from a copy in its workspace, so it is found by name, not by path)."""
        try:
            descendants = psutil.Process(self.server.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return None
        for proc in descendants:
            try:
                if proc.name() == "tritonserver" or Path((proc.cmdline() or [""])[0]).name == "tritonserver":
                    return proc.pid
            except psutil.NoSuchProcess:
                continue
        return None

    def events_since(self, n: int) -> list[str]:
        """The supervisor's lines (a death, the restart) and Triton's readiness, since line ``n``."""
        return [line.strip() for line in self.lines[n:]
                if "supervisor:" in line or self.server.READY_LINE in line]

    def stop(self) -> None:
        self.server.stop()


class TritonPrediction:
    """``POST /v2/models/<model>/infer`` (KServe v2, plain JSON): the image as base64 text in the
    ``image`` BYTES element, as ``serving/triton.py``'s ``_image_bytes`` takes it. Triton answers
    a refused image with 200 and the error JSON in ``result``: that counts as ``result <code>``."""

    def __init__(self, port: int, model: str = "clead") -> None:
        self.port, self.model = port, model

    def send(self, conn: http.client.HTTPConnection, image: bytes) -> Answer:
        body = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1, 1],
                                       "data": [base64.b64encode(image).decode("ascii")]}]})
        conn.request("POST", f"/v2/models/{self.model}/infer", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        status = result_status(data) if resp.status == 200 else resp.status
        return Answer(status, resp.getheader("Retry-After"), resp.will_close)


def result_status(data: bytes) -> int | str:
    """200 for a v2 answer whose ``result`` is a prediction; otherwise what it holds instead."""
    try:
        outputs = {o["name"]: o for o in json.loads(data)["outputs"]}
        result = json.loads(outputs["result"]["data"][0])
    except (ValueError, KeyError, IndexError, TypeError):
        return "malformed result"
    return f"result {result['code']}" if "code" in result and "message" in result else 200


class TritonClientLoad(ClientLoad):
    """A :class:`ClientLoad` through ``serving.client.TritonClient``, run by this module's
    ``main`` in the Triton environment's python; ``start`` returns once its clients are made."""

    def __init__(self, url: str, n: int, concurrency: int = 4, model: str = "clead") -> None:
        super().__init__(make_client=None, bodies=[], n=n, concurrency=concurrency, model=model)
        self.url = url

    def start(self) -> threading.Thread:
        from serving.tritonenv import has_pytriton, triton_env_vars, venv_dir, venv_python

        python = sys.executable if has_pytriton() else str(venv_python(venv_dir()))
        cmd = [python, "-m", "benchmarks.reliability_triton", "--url", self.url, "--requests", str(self.n),
               "--concurrency", str(self.concurrency), "--model", self.model]
        proc = subprocess.Popen(cmd, cwd=REPO, env=triton_env_vars(), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        ready = proc.stdout.readline()
        if ready.strip() != "ready":
            proc.kill()
            raise RuntimeError(f"the Triton client load did not start: {ready!r} (exit {proc.wait()})")
        proc.stdin.write("go\n")
        proc.stdin.flush()

        def collect() -> None:
            out, _ = proc.communicate(timeout=600)
            self.results = [Result(*row) for row in json.loads(out)]

        thread = threading.Thread(target=collect, daemon=True)
        thread.start()
        return thread


def check_triton_kill(models: dict[str, Path], bodies: list[bytes], n: int, settle_s: float) -> dict:
    """Start ``clead-serve triton``, warm it up, kill its tritonserver under load, stop it."""
    stack = TritonStack(models)
    try:
        request = TritonPrediction(stack.port)
        warm = Load(request, bodies, min(n, 100), 16).run().summary()
        before = len(stack.lines)
        fault = check_fault(stack, request, TritonClientLoad(stack.url, n // 4), KILLED, stack.tritonserver_pid,
                            bodies, n, settle_s)
        # Triton answers before `serve()` has checked every model and says it is ready again: wait for that line.
        deadline = time.monotonic() + 60
        while not any(stack.server.READY_LINE in line for line in stack.lines[before:]) and time.monotonic() < deadline:
            time.sleep(0.2)
        fault["supervisor"] = stack.events_since(before)
        fault["pid_after"] = stack.tritonserver_pid()
        fault["python_pid"] = stack.server.process.pid  # the supervising process: never the one killed
        return {**fault, "startup_s": stack.startup_s, "warmup": warm}
    finally:
        stack.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reliability_triton",
                                     description="the client load of the Triton kill (run in the Triton environment)")
    parser.add_argument("--url", required=True, help="Triton's HTTP address, host:port")
    parser.add_argument("--requests", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--model", default="clead")
    args = parser.parse_args(argv)
    from serving.client import TritonClient

    TritonClient(args.url)  # imports tritonclient (a second or two) before the parent starts its clock
    load = ClientLoad(lambda: TritonClient(args.url), images(16), args.requests, args.concurrency, args.model)
    print("ready", flush=True)
    sys.stdin.readline()
    load.run()
    print(json.dumps([[r.start, r.end, r.status] for r in load.results]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

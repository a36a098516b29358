"""A bounded closed-loop load generator: ``concurrency`` threads, each with one kept-alive
HTTP connection, send ``requests`` images between them and time every answer.

Written by hand (not wrk or locust) because each answer's body is read: our handler reports
the batch size the server formed for it, and the same generator must speak TorchServe's
``/predictions`` and Triton's KServe v2 binary protocol. It uses ``http.client`` directly,
which costs the client a fraction of what ``requests`` does; the client's own CPU time per
request is measured and reported, since on a 2-core machine it competes with the server.
"""

from __future__ import annotations

import http.client
import itertools
import json
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np


@dataclass
class Target:
    """One endpoint: where to POST, how to wrap an image, how to read the batch size back."""

    name: str
    host: str
    port: int
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    wrap: Callable[[bytes], tuple[bytes, dict[str, str]]] = lambda body: (body, {})
    batch_size: Callable[[bytes], Optional[int]] = lambda body: None


def torchserve_target(url: str, model: str, key: Optional[str] = None) -> Target:
    host, port = url.split("://", 1)[-1].rstrip("/").split(":")
    headers = {"Content-Type": "application/octet-stream"}
    if key:
        headers["Authorization"] = f"Bearer {key}"

    def batch_size(body: bytes) -> Optional[int]:
        answer = json.loads(body)
        return answer.get("batch_size")  # ours reports it; the stock handler does not

    return Target(f"torchserve:{model}", host, int(port), f"/predictions/{model}", headers, batch_size=batch_size)


def triton_target(url: str, model: str) -> Target:
    """KServe v2 with the binary-data extension: a JSON header, then the BYTES tensor
    (4-byte little-endian length + the file), exactly what ``tritonclient`` sends."""
    host, port = url.split("://", 1)[-1].rstrip("/").split(":")

    def wrap(image: bytes) -> tuple[bytes, dict[str, str]]:
        header = json.dumps({
            "inputs": [{"name": "image", "shape": [1, 1], "datatype": "BYTES",
                        "parameters": {"binary_data_size": len(image) + 4}}],
            "outputs": [{"name": "result", "parameters": {"binary_data": False}}],
        }).encode()
        return header + struct.pack("<I", len(image)) + image, {"Inference-Header-Content-Length": str(len(header))}

    def batch_size(body: bytes) -> Optional[int]:
        result = json.loads(body)["outputs"][0]["data"][0]
        return json.loads(result)["batch_size"]

    return Target(f"triton:{model}", host, int(port), f"/v2/models/{model}/infer",
                  {"Content-Type": "application/octet-stream"}, wrap, batch_size)


def run_load(target: Target, images: Sequence[bytes], requests: int, concurrency: int,
             warmup: Optional[int] = None, timeout_s: float = 120.0) -> dict:
    """Send ``requests`` POSTs at ``concurrency`` (after ``warmup`` untimed ones); return the figures."""
    bodies = [target.wrap(image) for image in images]
    warmup = min(2 * concurrency, 64) if warmup is None else warmup
    if warmup:
        _drive(target, bodies, warmup, concurrency, timeout_s)
    cpu0, start = time.process_time(), time.perf_counter()
    latencies, batches, errors = _drive(target, bodies, requests, concurrency, timeout_s)
    wall = time.perf_counter() - start
    client_cpu = time.process_time() - cpu0
    if errors:
        raise RuntimeError(f"{target.name}: {len(errors)} of {requests} requests failed, first: {errors[0]}")
    lat = np.array(latencies) * 1000
    sizes = Counter(b for b in batches if b is not None)
    return {
        "target": target.name,
        "requests": requests,
        "concurrency": concurrency,
        "wall_s": wall,
        "rps": requests / wall,
        "p50_ms": float(np.percentile(lat, 50)),
        "p95_ms": float(np.percentile(lat, 95)),
        "p99_ms": float(np.percentile(lat, 99)),
        "mean_ms": float(lat.mean()),
        "batch_sizes": {str(k): v for k, v in sorted(sizes.items())},
        # Mean batch a request shared its forward pass with (request-weighted).
        "mean_batch": float(np.mean([b for b in batches if b is not None])) if sizes else None,
        "client_cpu_ms_per_request": 1000 * client_cpu / requests,
    }


def _drive(target: Target, bodies: list, requests: int, concurrency: int, timeout_s: float):
    counter = itertools.count()  # next() on a count is atomic under the GIL
    latencies: list[float] = []
    batches: list[Optional[int]] = []
    errors: list[str] = []

    def worker() -> None:
        conn = http.client.HTTPConnection(target.host, target.port, timeout=timeout_s)
        try:
            while (i := next(counter)) < requests:
                body, extra = bodies[i % len(bodies)]
                t0 = time.perf_counter()
                conn.request("POST", target.path, body, {**target.headers, **extra})
                resp = conn.getresponse()
                data = resp.read()
                latencies.append(time.perf_counter() - t0)
                if resp.status != 200:
                    errors.append(f"{resp.status} {data[:200]!r}")
                    continue
                batches.append(target.batch_size(data))
        except (OSError, http.client.HTTPException) as exc:
            errors.append(repr(exc))
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, batches, errors

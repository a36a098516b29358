"""What the front (``serving/front.py``) adds to a prediction: the same TorchServe instance is
loaded through its own inference port and through the front, in alternating rounds.

    python -m benchmarks.front_overhead                      # the shipped clead model, c = 1 and 32
    python -m benchmarks.front_overhead --rounds 3 --requests 200 --concurrency 1 8 32

Three targets share one TorchServe (started here on free loopback ports, as ``clead-serve up``
does): ``direct`` (TorchServe's own port, ``application/octet-stream``), ``front`` (the same
request through the front) and ``front-form`` (curl ``--data-binary``'s form content type,
relabelled by the front). Rounds rotate the order so drift on a shared machine hits all three
alike; the table shows per-target medians over rounds, the front's extra latency as the
difference of the medians, and the CPU time the front process itself spent per request it
relayed (user + system, from /proc: robust to other load on the machine, unlike latency).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks.common import png_images
from benchmarks.load import Target, run_load, torchserve_target
from serving.torchserve import ServerConfig, TorchServe, free_port, read_keys

REPO = Path(__file__).resolve().parents[1]


def targets(server: TorchServe, model: str) -> dict[str, Target]:
    key = read_keys(server.workdir).get("inference")
    direct = torchserve_target(server.config.torchserve_inference_url, model, key)
    front = torchserve_target(server.config.inference_url, model, key)
    form = torchserve_target(server.config.inference_url, model, key)
    form.headers = {**form.headers, "Content-Type": "application/x-www-form-urlencoded"}
    return {"direct": direct, "front": front, "front-form": form}


def measure(server: TorchServe, model: str, concurrency: int, rounds: int, requests: int) -> dict[str, list[dict]]:
    import psutil

    front = psutil.Process(server.front.pid)
    images = png_images()
    runs: dict[str, list[dict]] = {}
    named = list(targets(server, model).items())
    for name, target in named:  # warm every path (and TorchServe's worker) once
        run_load(target, images, min(4 * concurrency, 128), concurrency, warmup=0)
    for r in range(rounds):
        for name, target in named[r % len(named):] + named[: r % len(named)]:
            cpu = sum(front.cpu_times()[:2])
            result = run_load(target, images, requests, concurrency, warmup=0)
            result["front_cpu_ms"] = 1000 * (sum(front.cpu_times()[:2]) - cpu) / requests
            runs.setdefault(name, []).append(result)
    return runs


def table(results: dict[int, dict[str, list[dict]]]) -> str:
    lines = ["| concurrency | path | p50 ms | mean ms | p99 ms | req/s | front adds (p50 / mean) "
             "| front CPU ms/request |", "|---|---|---|---|---|---|---|---|"]
    keys = ("p50_ms", "mean_ms", "p99_ms", "rps", "front_cpu_ms")
    for concurrency, runs in results.items():
        med = {name: {k: statistics.median(run[k] for run in rs) for k in keys} for name, rs in runs.items()}
        base = med["direct"]
        for name, m in med.items():
            extra = "" if name == "direct" else (f"+{m['p50_ms'] - base['p50_ms']:.2f} ms / "
                                                 f"+{m['mean_ms'] - base['mean_ms']:.2f} ms")
            cpu = "" if name == "direct" else f"{m['front_cpu_ms']:.2f}"
            lines.append(f"| {concurrency} | {name} | {m['p50_ms']:.2f} | {m['mean_ms']:.2f} | {m['p99_ms']:.2f} | "
                         f"{m['rps']:.0f} | {extra} | {cpu} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.front_overhead", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=REPO / "models" / "cifar10" / "clead.pt")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=300, help="requests per target per round")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="clead-front-") as workdir:
        ports = [free_port() for _ in range(5)]
        config = ServerConfig(workdir=Path(workdir), inference_port=ports[0], management_port=ports[1],
                              metrics_port=ports[2], grpc_inference_port=ports[3], grpc_management_port=ports[4])
        server = TorchServe({"clead": args.model}, config)
        server.start()
        try:
            load = os.getloadavg()[0]
            results = {c: measure(server, "clead", c, args.rounds, args.requests) for c in args.concurrency}
        finally:
            server.stop()
    print(table(results))
    print(f"\n{args.rounds} rounds x {args.requests} requests per target; {os.cpu_count()} CPUs, "
          f"load average {load:.2f} at the start; model {args.model.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``make bench``: run the suite, save ``benchmarks/results/<date>-<host>.json``, regenerate the docs.

    python -m benchmarks.run                  # everything (about 15 minutes on a 2-core CPU)
    python -m benchmarks.run -k served        # a subset (pytest -k); the docs show what ran
    python -m benchmarks.run --report-only benchmarks/results/<file>.json

The JSON is pytest-benchmark's own (``--benchmark-json``), with the load-test figures in
each served case's ``extra_info`` and this run's context under ``"clead"``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DOC = REPO / "docs" / "benchmarks.md"


def pytest_command(json_path: Path, scale: str, keyword: str | None, extra: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "pytest", str(REPO / "benchmarks"),
           "-o", "python_files=bench_*.py", "-o", "testpaths=benchmarks", "-p", "no:cacheprovider",
           "--benchmark-json", str(json_path), "--bench-scale", scale, "-q", "--timeout", "900"]
    if keyword:
        cmd += ["-k", keyword]
    return cmd + extra


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-k", dest="keyword", help="run only the cases matching this pytest -k expression")
    parser.add_argument("--scale", choices=("full", "smoke"), default="full")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("CLEAD_BENCH_THREADS", "1")),
                        help="torch intra-op threads, here and in every server worker (default 1, see docs)")
    parser.add_argument("--out", type=Path, default=None, help="results JSON (default benchmarks/results/<date>-<host>.json)")
    parser.add_argument("--doc", type=Path, default=DOC, help="the Markdown summary to regenerate")
    parser.add_argument("--report-only", type=Path, default=None, help="regenerate the docs from this results JSON")
    args, extra = parser.parse_known_args(argv)
    from benchmarks.report import write_report

    if args.report_only:
        write_report(json.loads(args.report_only.read_text()), args.doc, args.report_only)
        return 0
    host = socket.gethostname().split(".")[0]
    out = args.out or RESULTS / f"{datetime.date.today().isoformat()}-{host}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    # One intra-op thread everywhere (this process, TorchServe and Triton workers inherit the
    # environment): on a 2-core machine shared with a training run, 2 threads made a PGD-AT
    # step 4x slower and far noisier than 1 (OpenMP threads spin-wait for a busy core).
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    load_before, start = os.getloadavg()[0], time.time()
    code = subprocess.call(pytest_command(out, args.scale, args.keyword, extra), cwd=REPO, env=env)
    if not out.is_file():
        print(f"benchmarks.run: pytest wrote no results (exit {code})", file=sys.stderr)
        return code or 1
    data = json.loads(out.read_text())
    data["clead"] = {
        "wall_s": time.time() - start, "pytest_exit": code, "scale": args.scale, "threads": args.threads,
        "keyword": args.keyword, "host": host, "cpus": os.cpu_count(),
        "load_average_before": load_before, "load_average_after": os.getloadavg()[0],
    }
    out.write_text(json.dumps(data, indent=1) + "\n")
    write_report(data, args.doc, out)
    print(f"results: {out.relative_to(REPO) if out.is_relative_to(REPO) else out}\nsummary: {args.doc}")
    return code


if __name__ == "__main__":
    sys.exit(main())

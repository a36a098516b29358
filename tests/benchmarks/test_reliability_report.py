"""``benchmarks.reliability``'s report page from a measured-shaped result (no server: the checks
themselves run against the real stack in ``make reliability`` and, in small, in
``tests/serving/test_faults.py``)."""

from __future__ import annotations

from benchmarks.reliability import Load, Result, render


def load_summary(statuses: dict, n: int, conc: int) -> dict:
    return {"requests": n, "concurrency": conc, "statuses": statuses, "ok": statuses.get("200", 0), "rps": 50.0,
            "p50_ms": 10.0, "p99_ms": 90.0, "max_ms": 120.0}


def report(scale: float = 1.0) -> dict:
    fault = {**load_summary({"200": 1500}, 1500, 16), "killed": "model worker", "lost": 0, "recovery_s": 3.2,
             "supervisor": []}
    front = {**load_summary({"200": 1490, "RemoteDisconnected": 10}, 1500, 16), "killed": "front", "lost": 10,
             "recovery_s": 1.5, "supervisor": ["supervisor: the front exited (killed by SIGKILL); restart 1/5"],
             "client": {"requests": 375, "ok": 374, "lost": {"PredictionError": 1}}}
    return {
        "command": "python -m benchmarks.reliability", "date": "2026-12-01 09:00 UTC", "git": "abc1234",
        "machine": "2 CPU cores", "models": ["clead=models/cifar10/clead.pt"], "startup_s": 20.0, "scale": scale,
        "wall_min": 9.5, "loadavg": [0.3, 3.1], "load": load_summary({"200": 5000}, 5000, 64),
        "soak": {**load_summary({"200": 20000}, 20000, 32), "rss_warm_mb": {"front": 25.0, "worker 1": 500.0},
                 "rss_end_mb": {"front": 25.5, "worker 1": 505.0}, "rss_growth_pct": {"front": 2.0, "worker 1": 1.0}},
        "fuzz": {"cases": 300, "statuses": {"200": 40, "400": 200, "415": 50, "413": 10}, "not_200_or_4xx": 0,
                 "worker_pids_unchanged": True},
        "faults": [fault, front, {**front, "killed": "TorchServe (java)", "recovery_s": None}],
        "slow": {"stalled_connections": 32, "baseline": load_summary({"200": 500}, 500, 8),
                 "during": load_summary({"200": 500}, 500, 8), "stalled_answers": {"408": 16, "closed": 16},
                 "stalled_closed_after_s": {"headers": {"min": 10.1, "max": 10.4}, "body": {"min": 60.1, "max": 60.3}}},
        "overload": {**load_summary({"200": 1000, "503": 2000}, 3000, 192), "busy_503": 2000,
                     "busy_with_retry_after": 2000, "busy_p99_ms": 40.0, "idle_connections_opened": 300,
                     "excess_connection": {"status": 503, "retry_after": "1", "ms": 2.0}},
        "triton": "**Triton kill: not run** here.",
    }


def test_the_page_has_every_section_and_number():
    page = render(report())
    for heading in ("## Load held", "## Faults injected", "## Slow clients", "## Overload", "## Hostile input",
                    "## Running under systemd"):
        assert heading in page
    assert "| load | 5000 | 64 | 200: 5000 |" in page and "| worker 1 | 500 | 505 | +1.0% |" in page
    assert "| front | 1500 | 200: 1490, RemoteDisconnected: 10 | 10 | 1 / 375 (PredictionError: 1) | 1.5 |" in page
    assert "| model worker | 1500 | 200: 1500 | 0 | not measured | 3.2 |" in page  # a result without the client load
    assert "not within the wait" in page and "Scaled run" not in page
    assert "answers other than 200 or 4xx: 0" in page
    assert "load average was 0.30 when the run started and 3.10 when it ended" in page


def test_a_scaled_run_says_so():
    assert "**Scaled run** (`--scale 0.1`)" in render(report(0.1))


def test_the_load_summary_counts_connection_failures_as_answers():
    load = Load(stack=None, bodies=[b""], n=3, concurrency=1)
    load.results = [Result(0.0, 0.01, 200), Result(0.0, 0.02, "ConnectionRefusedError"), Result(0.0, 0.03, 503)]
    load.wall = 1.0
    summary = load.summary()
    assert summary["ok"] == 1 and summary["statuses"] == {"200": 1, "ConnectionRefusedError": 1, "503": 1}

"""``benchmarks.reliability``'s report page from a measured-shaped result (no server: the checks
themselves run against the real stack in ``make reliability`` and, in small, in
``tests/serving/test_faults.py`` and, for the Triton kill, ``tests/serving/test_servers.py``)."""

from __future__ import annotations

import argparse
import json

import pytest

from benchmarks.reliability import ClientLoad, Load, Result, engines_arg, render
from benchmarks.reliability_triton import KILLED, result_status, unavailable


def load_summary(statuses: dict, n: int, conc: int) -> dict:
    return {"requests": n, "concurrency": conc, "statuses": statuses, "ok": statuses.get("200", 0), "rps": 50.0,
            "p50_ms": 10.0, "p99_ms": 90.0, "max_ms": 120.0}


TRITON = {**load_summary({"200": 1180, "RemoteDisconnected": 16, "ConnectionRefusedError": 240, "404": 64}, 1500, 16),
          "killed": KILLED, "pid": 4242, "pid_after": 4343, "python_pid": 4200, "lost": 320, "recovery_s": 9.6,
          "startup_s": 14.0, "warmup": load_summary({"200": 100}, 100, 16),
          "client": {"requests": 375, "ok": 375, "lost": {}, "ended_after_kill": 300},
          "supervisor": ["2026-12-01T09:05:00Z supervisor: Triton died (Triton stopped unexpectedly; see its log "
                         "above); restart 1/5 in 0.50s",
                         "Triton is ready at http://127.0.0.1:8000 serving clead, baseline; Ctrl-C stops it"]}


def report(scale: float = 1.0, triton: dict | None = None) -> dict:
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
        "faults": [fault, front, {**front, "killed": "TorchServe (java)", "recovery_s": None}, triton or TRITON],
        "engines": ["torchserve", "triton"],
        "slow": {"stalled_connections": 32, "baseline": load_summary({"200": 500}, 500, 8),
                 "during": load_summary({"200": 500}, 500, 8), "stalled_answers": {"408": 16, "closed": 16},
                 "stalled_closed_after_s": {"headers": {"min": 10.1, "max": 10.4}, "body": {"min": 60.1, "max": 60.3}}},
        "overload": {**load_summary({"200": 1000, "503": 2000}, 3000, 192), "busy_503": 2000,
                     "busy_with_retry_after": 2000, "busy_p99_ms": 40.0, "idle_connections_opened": 300,
                     "excess_connection": {"status": 503, "retry_after": "1", "ms": 2.0}},
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


def test_the_triton_kill_is_a_row_of_the_faults_table():
    page = render(report())
    assert ("| Triton (tritonserver) | 1500 | 200: 1180, 404: 64, ConnectionRefusedError: 240, RemoteDisconnected: 16 "
            "| 320 | 0 / 375 | 9.6 | 2026-12-01T09:05:00Z supervisor: Triton died") in page
    assert "restart 1/5 in 0.50s; Triton is ready at http://127.0.0.1:8000" in page
    # the text says what was killed and what starts it again
    assert "Killed: `tritonserver`" in page and "`serving.supervisor.keep_running`" in page
    assert "tritonserver pid 4242, then 4343" in page and "`serving.client.TritonClient`" in page
    assert "`clead-serve triton` was ready 14 s after it was started" in page
    assert page.index("| TorchServe (java) |") < page.index("| Triton (tritonserver) |") < page.index("## Slow clients")


def test_a_triton_kill_that_did_not_run_says_why():
    reason = "this machine has no Triton environment"
    page = render(report(triton={"killed": KILLED, "not_run": reason}))
    assert f"| Triton (tritonserver) | not run | | | | | {reason} |" in page
    assert "Killed: `tritonserver`" not in page and "`clead-serve triton` was ready" not in page


def test_the_reason_names_the_missing_environment(monkeypatch, tmp_path):
    monkeypatch.setattr("serving.tritonenv.has_pytriton", lambda: False)
    monkeypatch.setenv("CLEAD_TRITON_VENV", str(tmp_path / "nowhere"))
    assert "no Triton environment" in unavailable()
    (tmp_path / "nowhere" / "bin").mkdir(parents=True)
    (tmp_path / "nowhere" / "bin" / "python").touch()
    assert unavailable() is None


def test_a_run_of_one_engine_says_which_and_has_its_sections_only():
    full = report()
    triton_only = {k: v for k, v in full.items() if k not in ("load", "soak", "fuzz", "slow", "overload", "startup_s")}
    page = render({**triton_only, "engines": ["triton"], "faults": [TRITON],
                   "command": "python -m benchmarks.reliability --engines triton"})
    assert "**Partial run** (`--engines triton`): only the Triton kill" in page
    assert "| Triton (tritonserver) | 1500 |" in page and "## Load held" not in page and "## Overload" not in page
    assert "`clead-serve up`" not in page.split("## Faults injected")[0]
    assert "Partial run" not in render(full)


@pytest.mark.parametrize("value, engines", [("triton", ["triton"]), ("triton,torchserve", ["torchserve", "triton"])])
def test_engines_are_parsed_in_the_order_they_run(value, engines):
    assert engines_arg(value) == engines


def test_an_unknown_engine_is_refused():
    with pytest.raises(argparse.ArgumentTypeError, match="choose from torchserve, triton"):
        engines_arg("kserve")


def v2_answer(result: dict) -> bytes:
    return json.dumps({"model_name": "clead", "outputs": [{"name": "result", "datatype": "BYTES", "shape": [1, 1],
                                                           "data": [json.dumps(result)]}]}).encode()


def test_a_triton_answer_counts_as_200_only_with_a_prediction_in_its_result():
    assert result_status(v2_answer({"label": "cat", "index": 3})) == 200
    assert result_status(v2_answer({"code": 415, "type": "UnsupportedMediaType", "message": "no"})) == "result 415"
    assert result_status(b"{}") == "malformed result"


def test_a_client_load_that_never_answered_counts_every_prediction_lost():
    load = ClientLoad(make_client=None, bodies=[b""], n=4)
    load.results = [Result(0.0, 1.0, 200), Result(0.0, 3.0, "PredictionError")]
    assert load.summary(killed_at=2.0) == {"requests": 4, "ok": 1, "lost": {"PredictionError": 1, "no result": 2},
                                           "ended_after_kill": 1}


def test_a_scaled_run_says_so():
    assert "**Scaled run** (`--scale 0.1`)" in render(report(0.1))


def test_the_load_summary_counts_connection_failures_as_answers():
    load = Load(request=None, bodies=[b""], n=3, concurrency=1)
    load.results = [Result(0.0, 0.01, 200), Result(0.0, 0.02, "ConnectionRefusedError"), Result(0.0, 0.03, 503)]
    load.wall = 1.0
    summary = load.summary()
    assert summary["ok"] == 1 and summary["statuses"] == {"200": 1, "ConnectionRefusedError": 1, "503": 1}

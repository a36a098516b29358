"""``serving.supervisor`` without TorchServe: stand-in processes that die, restarts with backoff,
the restart budget, and that a restart that fails is counted and retried; what a dead Triton
leaves behind is killed before the restart. The real kills (front, TorchServe, model worker) are
in ``test_faults.py``, Triton's in ``test_servers.py``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from serving.supervisor import RestartPolicy, Supervisor, describe_exit
from serving.torchserve import ServerError


def sleeper(seconds: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})"])


class FakeServer:
    """The parts of ``TorchServe`` the supervisor uses; ``front_lives`` says how long a new front lives."""

    def __init__(self, front_lives: float = 60.0, ready: bool = True) -> None:
        self.front_lives = front_lives
        self.ready = ready
        self.front = sleeper(0)
        self.process = sleeper(60)
        self.workdir = Path(".")
        self.started_fronts = 0

    def start_front(self) -> subprocess.Popen:
        self.started_fronts += 1
        return sleeper(self.front_lives)

    def write_record(self) -> None:
        pass

    def wait_ready(self, timeout_s: float) -> None:
        if not self.ready:
            raise ServerError("not answering")

    def kill(self) -> None:
        for proc in (self.front, self.process):
            proc.kill()
            proc.wait()


POLICY = dict(backoff_s=0.01, max_backoff_s=0.05, poll_s=0.01)


def test_a_dead_front_is_restarted_and_logged():
    server, lines = FakeServer(), []
    server.front.wait()
    try:
        assert Supervisor(server, RestartPolicy(**POLICY), log=lines.append).check()
        assert server.started_fronts == 1 and server.front.poll() is None
        assert "the front exited (exit code 0); restart 1/5" in lines[0] and "is back" in lines[1]
    finally:
        server.kill()


def test_the_budget_ends_supervision_with_exit_code_1():
    server, lines = FakeServer(front_lives=0), []  # every new front dies at once
    try:
        code = Supervisor(server, RestartPolicy(max_restarts=3, window_s=60, **POLICY), log=lines.append).run()
        assert code == 1 and server.started_fronts == 3
        assert "giving up" in lines[-1] and "3 restarts in the last 60s" in lines[-1]
    finally:
        server.kill()


def test_backoff_doubles_within_the_window():
    server, lines = FakeServer(front_lives=0), []
    try:
        Supervisor(server, RestartPolicy(max_restarts=4, backoff_s=0.01, max_backoff_s=10, poll_s=0.01),
                   log=lines.append).run()
        delays = [float(line.rsplit(" in ", 1)[1].rstrip("s")) for line in lines if "restart " in line]
        assert delays == [0.01, 0.02, 0.04, 0.08]
    finally:
        server.kill()


def test_restarts_older_than_the_window_are_forgotten():
    server = FakeServer(front_lives=0)
    supervisor = Supervisor(server, RestartPolicy(max_restarts=1, window_s=0.2, **POLICY), log=lambda _: None)
    try:
        assert supervisor.check()  # restart 1 of 1
        import time

        time.sleep(0.3)  # out of the window
        server.front.wait()
        assert supervisor.check(), "an old restart must not count against the budget"
    finally:
        server.kill()


def test_a_restart_that_does_not_get_ready_still_counts():
    server, lines = FakeServer(ready=False), []
    server.front.wait()
    try:
        assert Supervisor(server, RestartPolicy(**POLICY), log=lines.append).check()
        assert "did not come back: not answering" in lines[-1]
    finally:
        server.kill()


@pytest.mark.parametrize("code,text", [(-9, "killed by SIGKILL"), (1, "exit code 1"), (-15, "killed by SIGTERM")])
def test_exit_codes_are_named(code, text):
    assert describe_exit(code) == text


def test_keep_running_restarts_a_server_that_dies_and_stops_when_it_returns():
    from serving.supervisor import keep_running

    runs, lines = [], []

    def run():
        runs.append(1)
        if len(runs) < 3:
            raise RuntimeError("Triton stopped unexpectedly")

    assert keep_running(run, "Triton", RestartPolicy(**POLICY), log=lines.append) == 0
    assert len(runs) == 3 and "Triton died (Triton stopped unexpectedly); restart 1/5" in lines[0]


def test_keep_running_gives_up_after_the_budget():
    from serving.supervisor import keep_running

    def run():
        raise RuntimeError("dead again")

    lines = []
    assert keep_running(run, "Triton", RestartPolicy(max_restarts=2, **POLICY), log=lines.append) == 1
    assert "giving up" in lines[-1]


def test_clead_serve_triton_restarts_a_dead_triton(monkeypatch, tmp_path, capsys):
    """The CLI path, with a stand-in for PyTriton's serve (no Triton environment needed)."""
    import serving.cli as cli
    import serving.triton as triton
    import serving.tritonenv as tritonenv

    for name in ("clead", "baseline"):
        (tmp_path / f"{name}.pt").write_bytes(b"x")
        (tmp_path / f"{name}.json").write_text("{}")
    calls = []

    def fake_serve(models, config, ready=None):
        calls.append(sorted(models))
        if len(calls) == 1:
            raise RuntimeError("Triton stopped unexpectedly; see its log above")
        ready()

    monkeypatch.setattr(tritonenv, "has_pytriton", lambda: True)
    monkeypatch.setattr(triton, "serve", fake_serve)
    assert cli.main(["triton", "--models-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert len(calls) == 2 and "Triton died" in out and "restart 1/5" in out and "Triton is ready" in out


def stand_in_stub(region: str) -> subprocess.Popen:
    """A process that looks like a Python-backend stub of Triton (its path, its shared-memory name),
    with a child of its own, as the real one has."""
    argv = ["/ws/tritonserver/backends/python/triton_python_backend_stub", "-c", "sleep 60 & wait", "sh", region]
    return subprocess.Popen(argv, executable="/bin/sh")


def gone(proc) -> bool:
    import psutil

    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_the_stubs_a_dead_triton_left_behind_are_killed_and_their_memory_freed():
    import os
    import time

    import psutil

    from serving.triton import kill_stray_stubs

    ours, other = f"pytrtion{os.getpid()}-0123abcd", "pytrtion1-0123abcd"  # PyTriton names them after its pid
    region = Path("/dev/shm", ours)
    region.write_bytes(b"\0" * 64)
    stray, foreign = stand_in_stub(ours), stand_in_stub(other)
    try:
        deadline = time.monotonic() + 10
        while not psutil.Process(stray.pid).children() and time.monotonic() < deadline:
            time.sleep(0.05)
        child = psutil.Process(stray.pid).children()[0]
        assert kill_stray_stubs() == 1
        assert stray.wait(timeout=10) == -9 and not region.exists()
        deadline = time.monotonic() + 10
        while not gone(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gone(child), "the stub's own processes go too"
        assert foreign.poll() is None, "a stub of another process's Triton is left alone"
    finally:
        for proc in (stray, foreign):
            for leftover in psutil.Process(proc.pid).children() if proc.poll() is None else []:
                leftover.kill()
            proc.kill()
            proc.wait(timeout=10)
        region.unlink(missing_ok=True)

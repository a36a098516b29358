"""``clead-train pause``: the processes writing to a run are stopped while a command runs, the
pause is recorded before they resume, and readers take it out of the wall time."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from training import cli
from training.pauses import net_wall_seconds, paused_seconds, processes_writing

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds processes through /proc (Linux)")

# A stand-in for `clead-train fit --out RUN`: a parent that ticks a counter file, and a child
# (as a DataLoader worker would be) that ticks its own.
FAKE_FIT = """
import subprocess, sys, time
from pathlib import Path
run = Path(sys.argv[2])
tick = "import time, pathlib, sys\\nn = 0\\nwhile True:\\n    n += 1; pathlib.Path(sys.argv[1]).write_text(str(n)); time.sleep(0.02)"
child = subprocess.Popen([sys.executable, "-c", tick, str(run / "child.count")])
n = 0
while True:
    n += 1
    (run / "parent.count").write_text(str(n))
    time.sleep(0.02)
"""


def state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@pytest.fixture
def fake_fit(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", FAKE_FIT, "--out", str(run)], cwd=tmp_path)
    deadline = time.monotonic() + 30
    while not (run / "child.count").is_file() and time.monotonic() < deadline:
        time.sleep(0.05)
    yield run, proc
    for pid in processes_writing(run):
        subprocess.run(["kill", "-9", str(pid)], check=False)
    proc.wait(timeout=10)


def test_the_run_and_its_children_are_stopped_while_the_command_runs(fake_fit, capsys):
    run, proc = fake_fit
    pids = processes_writing(run)
    assert proc.pid in pids and len(pids) == 2  # the fit and its worker
    # The command checks, while it runs, that both are stopped and their counters frozen.
    # (SIGSTOP lands asynchronously: a process inside a write finishes it first, hence the first sleep.)
    check = ("import sys, time, pathlib; r = pathlib.Path(sys.argv[1]); time.sleep(0.2);"
             "a = [f.read_text() for f in sorted(r.glob('*.count'))]; time.sleep(0.3);"
             f"s = [open(f'/proc/{{p}}/stat').read().rsplit(')', 1)[1].split()[0] for p in {pids}];"
             "b = [f.read_text() for f in sorted(r.glob('*.count'))]; sys.exit(0 if a == b and set(s) == {'T'} else 3)")
    assert cli.main(["pause", str(run), "--", sys.executable, "-c", check, str(run)]) == 0
    entries = [json.loads(line) for line in (run / "pauses.jsonl").read_text().splitlines()]
    assert len(entries) == 1 and entries[0]["pids"] == pids and entries[0]["seconds"] >= 0.5
    assert entries[0]["why"].startswith(sys.executable)
    before = (run / "parent.count").read_text()
    time.sleep(0.3)
    # Resumed: counting again, and no longer stopped (running, sleeping, or inside a write: D).
    assert (run / "parent.count").read_text() != before and not {state(p) for p in pids} & {"T", "t"}
    assert "stopped 2 process(es)" in capsys.readouterr().err


def test_the_command_exit_code_is_passed_on_and_the_run_resumed(fake_fit):
    run, proc = fake_fit
    assert cli.main(["pause", str(run), "--", sys.executable, "-c", "raise SystemExit(7)"]) == 7
    assert paused_seconds(run) > 0
    time.sleep(0.1)
    assert state(proc.pid) != "T"


def test_seconds_pause_and_net_wall_time(fake_fit):
    run, _ = fake_fit
    assert cli.main(["pause", str(run), "--seconds", "0.2"]) == 0
    assert cli.main(["pause", str(run), "--seconds", "0.2"]) == 0
    paused = paused_seconds(run)
    assert 0.35 <= paused < 5 and net_wall_seconds(run, 100.0) == pytest.approx(100.0 - paused)
    assert net_wall_seconds(run, None) is None and paused_seconds(run.parent) == 0.0  # no ledger: no pause


@pytest.mark.parametrize("argv, message", [
    (["--seconds", "1", "RUN", "--", "true"], "either a command"),
    (["RUN"], "either a command"),
    (["--seconds", "0", "RUN"], "--seconds must be positive"),
])
def test_bad_arguments_are_refused(tmp_path, capsys, argv, message):
    assert cli.main(["pause", *[str(tmp_path) if a == "RUN" else a for a in argv]]) == 2
    assert message in capsys.readouterr().err


def test_nothing_running_is_an_error_naming_the_directory(tmp_path, capsys):
    assert cli.main(["pause", str(tmp_path / "idle"), "--seconds", "1"]) == 2
    assert f"no running process writes to {tmp_path / 'idle'}" in capsys.readouterr().err
    assert not (tmp_path / "idle").exists()


def test_the_clock_of_a_watched_run_leaves_its_recorded_pauses_out(tmp_path, monkeypatch):
    """`clead-train eval` times attacks with pauses.clock(): a pause recorded in the ledger
    while an attack ran is not part of the attack's seconds."""
    from training import pauses

    monkeypatch.setattr(pauses, "_watched", None)
    t = [100.0]
    monkeypatch.setattr(pauses.time, "perf_counter", lambda: t[0])
    pauses.watch(tmp_path)
    start = pauses.clock()
    t[0] += 50  # 50 s pass, 30 of them stopped by `clead-train pause`
    pauses.record(tmp_path, time.time(), 30.0, [1], "make test")
    assert pauses.clock() - start == pytest.approx(20.0)
    pauses.watch(None)
    assert pauses.clock() == 150.0

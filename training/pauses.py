"""Pause a running ``clead-train fit`` (or ``eval``) without charging the pause to its wall time.

A training run's wall time is its budget (``summary.json`` ``wall_seconds``, the study's
"training wall time"). On a small machine one sometimes has to stop a background run for a
while (a test suite, a benchmark that needs the CPU): ::

    clead-train pause runs/ship-clead -- make test      # stopped while `make test` runs
    clead-train pause runs/ship-clead --seconds 600     # stopped for ten minutes

stops every process writing to that directory (the command whose ``--out`` names it, and its
children) with SIGSTOP, runs the command (or waits), and appends the pause to
``<run>/pauses.jsonl`` *before* resuming them with SIGCONT, so a reader never sees the run
advance past an unrecorded pause. The run's clock keeps counting (``wall_seconds`` stays what
the clock said); whoever reports the budget subtracts the ledger:
:func:`net_wall_seconds`. ``clead-train eval`` times its attacks with :func:`clock`, which
subtracts the ledger as it goes. Stopping a process some other way (``kill -STOP``, a suspended
machine) is not recorded and stays in the wall time.

Finding the processes reads ``/proc`` (Linux); elsewhere pass ``--pid``.
"""

from __future__ import annotations

import json
import os
import signal
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Optional, Sequence

LEDGER = "pauses.jsonl"


def _proc_cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")


def _out_dirs(argv: Sequence[str], cwd: Path) -> list[Path]:
    """The directories an argv names with ``--out X`` or ``--out=X``, resolved against ``cwd``."""
    outs = []
    for i, arg in enumerate(argv):
        if arg == "--out" and i + 1 < len(argv):
            outs.append(argv[i + 1])
        elif arg.startswith("--out="):
            outs.append(arg.split("=", 1)[1])
    return [(cwd / out).resolve() for out in outs if out]


def _children(pids: set[int]) -> set[int]:
    """Every descendant of ``pids`` (DataLoader workers, torchrun's ranks)."""
    parent_of = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                # /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces, so split after ')'
                parent_of[int(entry.name)] = int(entry.joinpath("stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = set(), set(pids)
    while frontier:
        frontier = {pid for pid, ppid in parent_of.items() if ppid in frontier} - found - pids
        found |= frontier
    return found


def processes_writing(run_dir: str | Path) -> list[int]:
    """PIDs of the processes whose ``--out`` is ``run_dir``, with their descendants (Linux)."""
    if not Path("/proc").is_dir():
        raise OSError("finding the processes of a run reads /proc (Linux); pass --pid instead")
    target, own = Path(run_dir).resolve(), os.getpid()
    roots = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == own:
            continue
        try:
            argv, cwd = _proc_cmdline(int(entry.name)), Path(os.readlink(entry / "cwd"))
        except OSError:  # gone, or another user's
            continue
        if target in _out_dirs(argv, cwd):
            roots.add(int(entry.name))
    return sorted(roots | _children(roots))


def record(run_dir: str | Path, started: float, seconds: float, pids: Sequence[int], why: str) -> None:
    entry = {"started": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
             "seconds": round(seconds, 3), "pids": list(pids), "why": why}
    with open(Path(run_dir) / LEDGER, "a") as f:
        f.write(json.dumps(entry) + "\n")


def paused_seconds(run_dir: Optional[str | Path]) -> float:
    """The pauses recorded for a run (0 when it has no ledger)."""
    ledger = Path(run_dir) / LEDGER if run_dir is not None else None
    if ledger is None or not ledger.is_file():
        return 0.0
    return sum(json.loads(line)["seconds"] for line in ledger.read_text().splitlines() if line.strip())


def net_wall_seconds(run_dir: Optional[str | Path], wall_seconds: Optional[float]) -> Optional[float]:
    """A run's wall time without its recorded pauses: what it cost to train."""
    return None if wall_seconds is None else wall_seconds - paused_seconds(run_dir)


_watched: Optional[Path] = None  # the run whose ledger clock() subtracts (set by watch)


def watch(run_dir: Optional[str | Path]) -> None:
    """Make :func:`clock` leave out the pauses recorded for ``run_dir`` (None: none), for a
    process that writes there: ``clead-train eval`` times each attack with it."""
    global _watched
    _watched = Path(run_dir) if run_dir is not None else None


def clock() -> float:
    """``time.perf_counter()`` less the pauses recorded so far for the watched run. A pause is
    recorded before the process resumes, so the difference of two readings is the time the
    process ran between them: a paused evaluation does not report the pause as attack time."""
    return time.perf_counter() - (paused_seconds(_watched) if _watched is not None else 0.0)


@contextmanager
def paused(run_dir: str | Path, why: str, pids: Optional[Sequence[int]] = None) -> Iterator[list[int]]:
    """SIGSTOP the run's processes for the ``with`` block; record the pause, then SIGCONT them."""
    pids = list(pids) if pids else processes_writing(run_dir)
    if not pids:
        raise ValueError(f"no running process writes to {run_dir} (no command line with --out {run_dir}); "
                         "nothing to pause")
    started, wall0 = time.time(), time.monotonic()
    stopped = []
    try:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
            except ProcessLookupError:  # a DataLoader worker that just ended
                continue
        yield stopped
    finally:
        record(run_dir, started, time.monotonic() - wall0, stopped, why)
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                continue

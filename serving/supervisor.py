"""Keep what ``clead-serve up`` (and ``clead-serve triton``) started running: restart a dead front or TorchServe, with backoff,
within a budget (by default 5 restarts in 10 minutes); past it, give up so that the service
manager above (systemd, see docs/reliability.md) sees a failure.

TorchServe replaces its own dead model workers; this covers the two processes nothing else
watches: the front (``serving/front.py``) and TorchServe's frontend (java and its launcher, one
process group). Every death and restart is logged with the exit code and the time taken.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Optional

from serving.front import ROTATED_KEYS
from serving.torchserve import KEY_FILE, ServerError, TorchServe, group_members, read_keys


@dataclass
class RestartPolicy:
    max_restarts: int = 5  # restarts allowed within window_s; the next death ends `up` with exit code 1
    window_s: float = 600.0  # seconds
    backoff_s: float = 0.5  # wait before the first restart in the window; doubles for each one after
    max_backoff_s: float = 30.0
    ready_timeout_s: float = 300.0  # a restarted TorchServe must answer every model within this
    poll_s: float = 0.5  # how often the processes are checked


def log(message: str) -> None:
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    print(f"{stamp} supervisor: {message}", flush=True)


class RestartBudget:
    """The policy's budget: how long to wait before the next restart, or None once it is spent."""

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy
        self.times: deque[float] = deque()  # monotonic times of the restarts in the window

    def next_delay(self) -> Optional[float]:
        now = time.monotonic()
        while self.times and now - self.times[0] > self.policy.window_s:
            self.times.popleft()
        if len(self.times) >= self.policy.max_restarts:
            return None
        return min(self.policy.backoff_s * 2 ** len(self.times), self.policy.max_backoff_s)

    def spend(self) -> None:
        self.times.append(time.monotonic())

    def __len__(self) -> int:
        return len(self.times)


def keep_running(run: Callable[[], None], what: str, policy: RestartPolicy | None = None,
                 log: Callable[[str], None] = log) -> int:
    """Call ``run`` (a server in this process, e.g. Triton's ``serve``) again whenever it raises
    RuntimeError (it died), within the budget. Returns 0 when it returned (stopped on purpose),
    1 when the budget is spent."""
    budget = RestartBudget(policy or RestartPolicy())
    while True:
        try:
            run()
            return 0
        except RuntimeError as exc:
            delay = budget.next_delay()
            if delay is None:
                log(f"{what} died ({exc}); {len(budget)} restarts in the last {budget.policy.window_s:.0f}s "
                    "already: giving up")
                return 1
            log(f"{what} died ({exc}); restart {len(budget) + 1}/{budget.policy.max_restarts} in {delay:.2f}s")
            time.sleep(delay)
            budget.spend()


class Supervisor:
    """Watches ``server.front`` and ``server.process``; :meth:`run` returns only when the budget is spent."""

    def __init__(self, server: TorchServe, policy: RestartPolicy | None = None,
                 log: Callable[[str], None] = log) -> None:
        self.server = server
        self.policy = policy or RestartPolicy()
        self.log = log
        self.restarts = RestartBudget(self.policy)

    def run(self) -> int:
        """Supervise until the restart budget is spent (exit code 1); Ctrl-C / SIGTERM raise out of here."""
        while self.check():
            time.sleep(self.policy.poll_s)
        return 1

    def check(self) -> bool:
        """One look at both processes, restarting a dead one; False once the budget is spent."""
        for what in ("the front", "TorchServe"):
            proc = self.server.front if what == "the front" else self.server.process
            if proc is None or proc.poll() is None:
                continue
            if not self.restart(what, proc.returncode):
                return False
        return True

    def restart(self, what: str, code: int) -> bool:
        policy = self.policy
        delay = self.restarts.next_delay()
        if delay is None:
            self.log(f"{what} exited ({describe_exit(code)}); {len(self.restarts)} restarts in the last "
                     f"{policy.window_s:.0f}s already: giving up")
            return False
        self.log(f"{what} exited ({describe_exit(code)}); restart {len(self.restarts) + 1}/{policy.max_restarts} "
                 f"in {delay:.2f}s")
        time.sleep(delay)
        self.restarts.spend()
        started = time.monotonic()
        try:
            if what == "the front":
                self.server.front = self.server.start_front()
                self.server.write_record()
                self.server.wait_ready(policy.ready_timeout_s)
            else:
                self.restart_torchserve()
        except ServerError as exc:
            # Still down (or up but not answering): the next check sees it and spends another restart.
            self.log(f"{what} did not come back: {exc}")
            if what == "TorchServe":
                self.kill_group()
            return True
        self.log(f"{what} is back (pid {(self.server.front if what == 'the front' else self.server.process).pid}), "
                 f"answering after {time.monotonic() - started:.1f}s")
        return True

    def restart_torchserve(self) -> None:
        """Whatever is left of the dead instance's process group goes first: a live java or worker
        would hold the ports. TorchServe writes new keys at start, so the old key file goes too;
        its inference key is kept for the front, which renews it for a grace period (clients that
        hold the key are not cut off by a restart they did not cause)."""
        self.kill_group()
        old = read_keys(self.server.workdir).get("inference")
        if old:
            rotated = self.server.workdir / ROTATED_KEYS
            rotated.touch(mode=0o600)
            rotated.write_text(json.dumps({"inference": old, "rotated_at": time.time()}))
        (self.server.workdir / KEY_FILE).unlink(missing_ok=True)
        self.server.launch()
        self.server.wait_ready(self.policy.ready_timeout_s)

    def kill_group(self) -> None:
        proc = self.server.process
        if proc is None:
            return
        for pid in group_members(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + 10
        while group_members(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)


def describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


"""``clead-train pause [--seconds N | --pid P] RUN [-- COMMAND ...]``: stop a running fit or eval
while COMMAND runs (or for N seconds), and keep the pause out of its wall time
(``training.pauses``). Options go before RUN: everything after it is the command."""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time

from training.pauses import LEDGER, paused


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN", help="the --out directory of the running clead-train fit or eval")
    p.add_argument("--seconds", type=float, help="pause this long instead of running a command")
    p.add_argument("--pid", type=int, action="append", default=[],
                   help="pause these processes instead of finding them (repeatable; needed off Linux)")
    # dest "cmd": "command" is the subcommand's name in clead-train's namespace
    p.add_argument("cmd", nargs="*", metavar="COMMAND", help="after --: the command to run while the run is stopped")


def run(args: argparse.Namespace) -> int:
    command = args.cmd
    if bool(command) == (args.seconds is not None):
        raise ValueError("give either a command (after --) or --seconds, not both and not neither")
    if args.seconds is not None and args.seconds <= 0:
        raise ValueError(f"--seconds must be positive, got {args.seconds}")
    why = shlex.join(command) if command else f"--seconds {args.seconds:g}"
    with paused(args.run_dir, why, args.pid) as pids:
        print(f"clead-train pause: stopped {len(pids)} process(es) of {args.run_dir} ({', '.join(map(str, pids))})",
              file=sys.stderr, flush=True)
        code = subprocess.call(command) if command else time.sleep(args.seconds) or 0
    print(f"clead-train pause: resumed; the pause is recorded in {args.run_dir}/{LEDGER}", file=sys.stderr)
    return code

"""``clead-train study``: train, select, export and evaluate everything the study spec lists.

``docs/study.yaml`` is the one description of the study: each row names its run directory
and evaluation reports (read by ``clead-train report``), and here also how to make them:

    fit: --method pgd-at               # flags for `clead-train fit`, after the spec's `fit_common`
    ship: pgd-at                       # export to models/cifar10/pgd-at.pt (metadata gets the metrics)
    artifact: runs/x/model.pt          # or export here (not shipped)
    select: ablation                   # this row's run is the ablation row with the best val robust acc
    views: Standard                    # fixed views made from that row's exported model (clead-fixed)

From the rows this builds a graph of jobs (fit -> select -> export -> views -> eval) and runs
them as subprocesses, as many at once as ``--jobs`` allows (on one GPU, all of them: small
models leave most of an accelerator idle), in the spec's order. Every job is resumable:
a finished fit (``summary.json``) is skipped, an unfinished one continues with ``--resume``, an
artifact newer than its checkpoint is kept, and evaluations run with ``--resume`` (the report
is rewritten after every attack). With ``--deadline`` the jobs still running at that time are
stopped and the rest is left for the next call; ``--prefix`` writes every run, artifact and
report under another folder (smoke tests: ``--smoke`` shrinks the data and attacks).

    clead-train study --spec docs/study.yaml --jobs 16 --deadline 540      # on a GPU
    clead-train study --spec docs/study.yaml --only Standard,PGD-AT        # some rows only
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

from training.study.spec import Row, load_row, load_spec, validation_of

SMOKE_FIT = ["--epochs", "1", "--limit", "1024", "--val-n", "100", "--val-attack-steps", "2"]
SHIP_DIR = Path("models/cifar10")


@dataclass
class Job:
    name: str
    argv: list[str] = field(default_factory=list)  # a clead-train command, or empty for `action`
    needs: list[str] = field(default_factory=list)
    done: Callable[[], bool] = lambda: False  # already complete: skip
    action: Optional[Callable[[], None]] = None  # in-process (quick) instead of a subprocess
    status: str = "pending"  # pending | running | ok | skipped | failed | blocked | stopped
    proc: Optional[subprocess.Popen] = None
    started: float = 0.0
    seconds: float = 0.0


@dataclass
class Plan:
    spec: dict
    prefix: Path
    data: str
    python: list[str]
    smoke: bool = False
    fit_extra: list[str] = field(default_factory=list)
    jobs: dict[str, Job] = field(default_factory=dict)

    def path(self, rel: str | Path) -> Path:
        return self.prefix / rel

    def cli(self, *args: str) -> list[str]:
        return [*self.python, *args]

    def add(self, job: Job) -> Job:
        if job.name in self.jobs:
            raise ValueError(f"spec: two jobs named {job.name!r} (row names must be unique)")
        self.jobs[job.name] = job
        return job


def artifact_of(row: dict, plan: Plan) -> Optional[Path]:
    if row.get("ship"):
        return plan.path(SHIP_DIR / f"{row['ship']}.pt")
    if row.get("artifact"):
        return plan.path(row["artifact"])
    return None


def _newer(a: Path, b: Path) -> bool:
    """``a`` exists and is not older than ``b`` (or ``b`` is gone: e.g. a run whose checkpoints
    stayed on the machine that trained it, with its artifact and reports copied here)."""
    return a.is_file() and (not b.is_file() or a.stat().st_mtime >= b.stat().st_mtime)


def best_of(runs: list[Path]) -> Path:
    """The finished run with the best selection score (val robust acc), ties to clean acc."""
    scored = []
    for run in runs:
        row = load_row(Row(run.name, "clead", "ablation", run, []))
        if row.summary is None:
            continue
        best = validation_of(row) or {}
        scored.append((row.summary.get("best_score", -1.0), best.get("val_clean_acc", 0.0), run))
    if not scored:
        raise ValueError("no finished ablation run to select from")
    return max(scored, key=lambda t: (t[0], t[1]))[2]


def _link(link: Path, target: Path) -> None:
    """Point ``link`` (a run path the report reads) at the selected run, relatively."""
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(link.name + ".tmp-link")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(os.path.relpath(target, link.parent))
    if link.exists() and not link.is_symlink():
        raise ValueError(f"{link} is a real run directory; the selected C-LEAD run is linked there, so move it away")
    os.replace(tmp, link)
    (link.parent / f"{link.name}.selected.json").write_text(json.dumps({"selected": str(target)}, indent=1) + "\n")


def build_plan(plan: Plan, only: Optional[set[str]] = None) -> Plan:
    """The jobs of the spec's rows (of ``only`` and the rows they need), in the spec's order:
    each row's fit or select, export and evaluations, then the fixed views once every export exists."""
    rows = plan.spec["rows"]
    by_name = {r["name"]: r for r in rows}
    wanted = _wanted(rows, by_name, only)
    flags = _eval_flags(plan)
    for r in rows:
        if r["name"] in wanted:
            _add_row_jobs(plan, r, by_name, flags)
    for r in rows:  # fixed views, after every export exists
        if r["name"] in wanted and r.get("views"):
            _add_views_job(plan, r, by_name[r["views"]])
    return plan


def _wanted(rows: list[dict], by_name: dict[str, dict], only: Optional[set[str]]) -> set[str]:
    wanted = set(by_name) if only is None else set(only)
    # Rows the wanted rows depend on (selection candidates, the source of fixed views) come too.
    for r in list(rows):
        if r["name"] in wanted and r.get("select"):
            wanted |= {x["name"] for x in rows if x.get("role") == r["select"]}
        if r["name"] in wanted and r.get("views"):
            wanted.add(r["views"])
    unknown = wanted - set(by_name)
    if unknown:
        raise ValueError(f"--only: no row(s) named {sorted(unknown)}; rows: {', '.join(by_name)}")
    return wanted


def _eval_flags(plan: Plan) -> dict[str, list[str]]:
    """``clead-train eval`` flags of a clean-only report (``runs/eval-NAME-clean``: the whole
    split, FGSM only) and of the attack report, from the spec's ``evaluation`` (smaller with --smoke)."""
    cfg = plan.spec.get("evaluation", {})
    attacks = "fgsm,pgd20" if plan.smoke else cfg.get("attacks", "fgsm,pgd20,autoattack")
    n = "100" if plan.smoke else str(cfg.get("n", 1000))
    clean_n = "500" if plan.smoke else str(cfg.get("clean_n", "all"))
    sanity = ["--sanity"] if cfg.get("sanity") and not plan.smoke else []
    curve = ["--curve-n", "50"] if plan.smoke else []
    return {"clean": ["--attacks", "fgsm", "--n", clean_n, "--no-curve"],
            "attacks": ["--attacks", attacks, "--n", n, *curve, *sanity]}


def _add_row_jobs(plan: Plan, r: dict, by_name: dict[str, dict], flags: dict[str, list[str]]) -> None:
    """The row's fit (or selection), and if it has an artifact, its export and evaluations."""
    name, run = r["name"], plan.path(r["run"])
    make = None
    if r.get("fit") is not None:
        make = _fit_job(plan, r, by_name, run)
    elif r.get("select"):
        make = _select_job(plan, r, run)
    artifact = artifact_of(r, plan)
    if artifact is None:
        return
    plan.add(Job(f"export:{name}", ["export", str(run), "--out", str(artifact), "--name", r.get("ship") or name],
                 [make.name] if make else [],
                 done=lambda a=artifact, run=run: _newer(a, run / "best.pt")))
    _add_eval_jobs(plan, r, artifact, flags)


def _fit_job(plan: Plan, r: dict, by_name: dict[str, dict], run: Path) -> Job:
    common = shlex.split(str(plan.spec.get("fit_common", "")))
    argv = ["fit", "--method", r["method"], *common, *shlex.split(str(r["fit"])), "--data", plan.data,
            "--out", str(run), *(SMOKE_FIT if plan.smoke else []), *plan.fit_extra]
    if r.get("views"):
        argv += ["--fixed-views", str(views_file(by_name[r["views"]], plan))]
    needs = [f"views:{r['name']}"] if r.get("views") else []
    return plan.add(Job(f"fit:{r['name']}", argv, needs, done=lambda run=run: (run / "summary.json").is_file()))


def _select_job(plan: Plan, r: dict, run: Path) -> Job:
    """Link the row's run to the best finished run of the role it selects from (in process)."""
    pool = [x for x in plan.spec["rows"] if x.get("role") == r["select"]]
    candidates = [plan.path(x["run"]) for x in pool]
    return plan.add(Job(f"select:{r['name']}", needs=[f"fit:{x['name']}" for x in pool],
                        action=lambda run=run, c=candidates: _link(run, best_of(c))))


def _add_eval_jobs(plan: Plan, r: dict, artifact: Path, flags: dict[str, list[str]]) -> None:
    name = r["name"]
    evals = [plan.path(e) for e in (r.get("eval") or [])]
    # A shipped model's evaluations write into its metadata: one after the other, not at once.
    update = ["--update-metadata"] if r.get("ship") else []
    for i, out in enumerate(evals):
        args = flags["clean"] if out.name.endswith("-clean") else flags["attacks"]
        plan.add(Job(f"eval:{name}:{out.name}", ["eval", "--model", str(artifact), "--data", plan.data, *args,
                                                 "--out", str(out), "--resume", "--no-progress", *update],
                     [f"export:{name}"] + ([f"eval:{name}:{evals[i - 1].name}"] if update and i else [])))


def _add_views_job(plan: Plan, r: dict, source: dict) -> None:
    """Fixed views from ``source``'s exported model, for the fit of row ``r``."""
    src_artifact = artifact_of(source, plan)
    if src_artifact is None:
        raise ValueError(f"spec row {r['name']!r}: views from {source['name']!r}, which exports no artifact")
    out = views_file(source, plan)
    plan.add(Job(f"views:{r['name']}", ["views", "--model", str(src_artifact), "--data", plan.data,
                                        "--out", str(out), "--no-progress",
                                        *shlex.split(str(plan.spec.get("views_args", "")))],
                 [f"export:{source['name']}"],
                 # Not needed once the run that reads the views has finished.
                 done=lambda o=out, a=src_artifact, run=plan.path(r["run"]):
                 _newer(o, a) or (run / "summary.json").is_file()))


def views_file(source_row: dict, plan: Plan) -> Path:
    return plan.path(Path(source_row["run"]).parent / f"views-{Path(source_row['run']).name}.pt")


# ---------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------
def execute(plan: Plan, max_jobs: int, deadline: Optional[float], log_dir: Path) -> dict[str, str]:
    """Run the plan's jobs, at most ``max_jobs`` at once, until all are done or ``deadline``
    seconds have passed (then the running ones are stopped); each job's status by name."""
    log_dir.mkdir(parents=True, exist_ok=True)
    for job in plan.jobs.values():
        missing = [n for n in job.needs if n not in plan.jobs]
        if missing:
            raise ValueError(f"job {job.name} needs {missing}, which the spec does not define")
    jobs, progress = list(plan.jobs.values()), _Progress()
    with _stop_on_signals() as stop:
        while True:
            out_of_time = deadline is not None and progress.elapsed() > deadline
            if out_of_time or stop.is_set():
                _stop_running(jobs, progress)
                progress.say("deadline reached: stopped the running jobs" if out_of_time else "interrupted")
                break
            for job in jobs:  # reap
                if job.status == "running" and job.proc.poll() is not None:
                    progress.finish(job, "ok" if job.proc.returncode == 0 else "failed")
            _launch_ready(plan, jobs, max_jobs, log_dir, progress)
            if all(j.status not in ("pending", "running") for j in jobs):
                break
            time.sleep(1.0)
    status = {j.name: j.status for j in jobs}
    (log_dir / "study-status.json").write_text(json.dumps(
        {"status": status, "seconds": {j.name: round(j.seconds, 1) for j in jobs},
         "wall_seconds": round(progress.elapsed(), 1)}, indent=1) + "\n")
    return status


class _Progress:
    """Time since the start of the run, and one line on stderr per event."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def say(self, text: str) -> None:
        print(f"[study {self.elapsed():6.0f} s] {text}", file=sys.stderr, flush=True)

    def finish(self, job: Job, status: str) -> None:
        job.status, job.seconds = status, time.monotonic() - job.started
        self.say(f"{status:7s} {job.name} ({job.seconds:.0f} s)")


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """While inside, SIGINT and SIGTERM only set the event: the loop then stops the running
    jobs itself (each leaves its state to resume from) instead of dying between two of them."""
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda signum, frame: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _stop_running(jobs: list[Job], progress: _Progress) -> None:
    """SIGTERM to every running job at once, then up to 20 s each to exit before SIGKILL."""
    for job in jobs:
        if job.status == "running":
            job.proc.terminate()
    for job in jobs:
        if job.status == "running":
            try:
                job.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                job.proc.kill()
            progress.finish(job, "stopped")


def _launch_ready(plan: Plan, jobs: list[Job], max_jobs: int, log_dir: Path, progress: _Progress) -> None:
    """Block the pending jobs whose needs failed; start those whose needs are done, in spec
    order, while fewer than ``max_jobs`` run."""
    for job in jobs:
        if job.status != "pending":
            continue
        states = [plan.jobs[n].status for n in job.needs]
        if any(s in ("failed", "blocked", "stopped") for s in states):
            job.status = "blocked"
            progress.say(f"blocked {job.name} (a job it needs did not finish)")
            continue
        if not all(s in ("ok", "skipped") for s in states):
            continue
        if sum(j.status == "running" for j in jobs) >= max_jobs:
            break
        _start(job, plan, log_dir, progress)


def _start(job: Job, plan: Plan, log_dir: Path, progress: _Progress) -> None:
    """Skip a job that is done, run an in-process one to the end, or start its subprocess."""
    job.started = time.monotonic()
    if job.done():
        progress.finish(job, "skipped")
        return
    if job.action is not None:
        try:
            job.action()
            progress.finish(job, "ok")
        except (ValueError, OSError) as exc:
            progress.say(f"{job.name}: {exc}")
            progress.finish(job, "failed")
        return
    argv = list(job.argv)
    if argv[0] == "fit":
        out = Path(argv[argv.index("--out") + 1])
        if (out / "last.pt").is_file():
            argv.append("--resume")
    progress.say(f"start   {job.name}: clead-train {shlex.join(argv)}")
    # The child writes through its own copy of the descriptor: ours closes at once.
    with open(log_dir / (job.name.replace(":", "-").replace(" ", "_").replace("/", "_") + ".log"), "ab") as log:
        job.proc = subprocess.Popen(plan.cli(*argv), stdout=log, stderr=subprocess.STDOUT,
                                    env=dict(os.environ, PYTHONUNBUFFERED="1"))
    job.status = "running"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spec", default="docs/study.yaml", help="study spec (default %(default)s)")
    p.add_argument("--data", default="../shared/data/cifar10", help="dataset (default %(default)s)")
    p.add_argument("--jobs", type=int, default=1, help="jobs at once (default 1; on one GPU, 8-16)")
    p.add_argument("--deadline", type=float, default=None, help="stop running jobs after this many seconds")
    p.add_argument("--only", default=None, help="comma-separated row names (and the rows they need)")
    p.add_argument("--prefix", default=".", help="folder under which the spec's paths are written (default: here)")
    p.add_argument("--smoke", action="store_true", help="1 epoch on 1,024 images, small evaluations (a check, not a study)")
    p.add_argument("--fit-extra", default="", help="flags appended to every fit, e.g. '--model tiny_cnn' for a smoke run")
    p.add_argument("--dry-run", action="store_true", help="print the jobs and exit")


def run(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    plan = Plan(spec, Path(args.prefix), args.data, [sys.executable, "-m", "training.cli"], smoke=args.smoke,
                fit_extra=shlex.split(args.fit_extra))
    build_plan(plan, set(s.strip() for s in args.only.split(",")) if args.only else None)
    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    if args.dry_run:
        for job in plan.jobs.values():
            what = "(in process)" if job.action else f"clead-train {shlex.join(job.argv)}"
            print(f"{job.name}  needs {job.needs or '-'}\n    {what}")
        return 0
    status = execute(plan, args.jobs, args.deadline, plan.path("runs/study-logs"))
    bad = {k: v for k, v in status.items() if v not in ("ok", "skipped")}
    if bad:
        print(f"clead-train study: not finished: {json.dumps(bad)} (logs in {plan.path('runs/study-logs')})",
              file=sys.stderr)
        return 1
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.study.run", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

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
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

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
    spec = plan.spec
    common = shlex.split(str(spec.get("fit_common", "")))
    rows = spec["rows"]
    by_name = {r["name"]: r for r in rows}
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
    eval_cfg = spec.get("evaluation", {})
    attacks = "fgsm,pgd20" if plan.smoke else eval_cfg.get("attacks", "fgsm,pgd20,autoattack")
    n = "100" if plan.smoke else str(eval_cfg.get("n", 1000))
    clean_n = "500" if plan.smoke else str(eval_cfg.get("clean_n", "all"))
    sanity = ["--sanity"] if eval_cfg.get("sanity") and not plan.smoke else []
    curve = ["--curve-n", "50"] if plan.smoke else []

    for r in rows:
        name = r["name"]
        if name not in wanted:
            continue
        run = plan.path(r["run"])
        fit_job = None
        if r.get("fit") is not None:
            argv = ["fit", "--method", r["method"], *common, *shlex.split(str(r["fit"])), "--data", plan.data,
                    "--out", str(run), *(SMOKE_FIT if plan.smoke else []), *plan.fit_extra]
            if r.get("views"):
                argv += ["--fixed-views", str(views_file(by_name[r["views"]], plan))]
            needs = [f"views:{name}"] if r.get("views") else []
            fit_job = plan.add(Job(f"fit:{name}", argv, needs, done=lambda run=run: (run / "summary.json").is_file()))
        elif r.get("select"):
            candidates = [plan.path(x["run"]) for x in rows if x.get("role") == r["select"]]
            fit_job = plan.add(Job(f"select:{name}", needs=[f"fit:{x['name']}" for x in rows if x.get("role") == r["select"]],
                                   action=lambda run=run, c=candidates: _link(run, best_of(c))))
        artifact = artifact_of(r, plan)
        if artifact is None:
            continue
        export_name = r.get("ship") or name
        plan.add(Job(f"export:{name}", ["export", str(run), "--out", str(artifact), "--name", export_name],
                     [fit_job.name] if fit_job else [],
                     done=lambda a=artifact, run=run: _newer(a, run / "best.pt")))
        evals = [plan.path(e) for e in (r.get("eval") or [])]
        update = ["--update-metadata"] if r.get("ship") else []
        for i, out in enumerate(evals):
            clean_only = out.name.endswith("-clean")
            args = (["--attacks", "fgsm", "--n", clean_n, "--no-curve"] if clean_only
                    else ["--attacks", attacks, "--n", n, *curve, *sanity])
            plan.add(Job(f"eval:{name}:{out.name}", ["eval", "--model", str(artifact), "--data", plan.data, *args,
                                                     "--out", str(out), "--resume", "--no-progress", *update],
                         [f"export:{name}"] + ([f"eval:{name}:{evals[i - 1].name}"] if update and i else [])))
    for r in rows:  # fixed views, after every export exists
        if r["name"] in wanted and r.get("views"):
            source = by_name[r["views"]]
            src_artifact = artifact_of(source, plan)
            if src_artifact is None:
                raise ValueError(f"spec row {r['name']!r}: views from {source['name']!r}, which exports no artifact")
            out = views_file(source, plan)
            plan.add(Job(f"views:{r['name']}", ["views", "--model", str(src_artifact), "--data", plan.data,
                                                "--out", str(out), "--no-progress",
                                                *shlex.split(str(spec.get("views_args", "")))],
                         [f"export:{source['name']}"],
                         # Not needed once the run that reads the views has finished.
                         done=lambda o=out, a=src_artifact, run=plan.path(r["run"]):
                         _newer(o, a) or (run / "summary.json").is_file()))
    return plan


def views_file(source_row: dict, plan: Plan) -> Path:
    return plan.path(Path(source_row["run"]).parent / f"views-{Path(source_row['run']).name}.pt")


# ---------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------
def execute(plan: Plan, max_jobs: int, deadline: Optional[float], log_dir: Path) -> dict[str, str]:
    log_dir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    jobs = list(plan.jobs.values())
    for job in jobs:
        missing = [n for n in job.needs if n not in plan.jobs]
        if missing:
            raise ValueError(f"job {job.name} needs {missing}, which the spec does not define")

    def say(text: str) -> None:
        print(f"[study {time.monotonic() - start:6.0f} s] {text}", file=sys.stderr, flush=True)

    def finish(job: Job, status: str) -> None:
        job.status, job.seconds = status, time.monotonic() - job.started
        say(f"{status:7s} {job.name} ({job.seconds:.0f} s)")

    stop_requested = False

    def on_signal(signum, frame):  # noqa: ARG001
        nonlocal stop_requested
        stop_requested = True

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            out_of_time = deadline is not None and time.monotonic() - start > deadline
            if out_of_time or stop_requested:
                for job in jobs:
                    if job.status == "running":
                        job.proc.terminate()
                for job in jobs:
                    if job.status == "running":
                        try:
                            job.proc.wait(timeout=20)
                        except subprocess.TimeoutExpired:
                            job.proc.kill()
                        finish(job, "stopped")
                say("deadline reached: stopped the running jobs" if out_of_time else "interrupted")
                break
            for job in jobs:  # reap
                if job.status == "running" and job.proc.poll() is not None:
                    finish(job, "ok" if job.proc.returncode == 0 else "failed")
            for job in jobs:  # unblock or launch, in spec order
                if job.status != "pending":
                    continue
                states = [plan.jobs[n].status for n in job.needs]
                if any(s in ("failed", "blocked", "stopped") for s in states):
                    job.status = "blocked"
                    say(f"blocked {job.name} (a job it needs did not finish)")
                    continue
                if not all(s in ("ok", "skipped") for s in states):
                    continue
                if sum(j.status == "running" for j in jobs) >= max_jobs:
                    break
                job.started = time.monotonic()
                if job.done():
                    finish(job, "skipped")
                    continue
                if job.action is not None:
                    try:
                        job.action()
                        finish(job, "ok")
                    except (ValueError, OSError) as exc:
                        say(f"{job.name}: {exc}")
                        finish(job, "failed")
                    continue
                argv = list(job.argv)
                if argv[0] == "fit":
                    out = Path(argv[argv.index("--out") + 1])
                    if (out / "last.pt").is_file():
                        argv.append("--resume")
                say(f"start   {job.name}: clead-train {shlex.join(argv)}")
                # The child writes through its own copy of the descriptor: ours closes at once.
                with open(log_dir / (job.name.replace(":", "-").replace(" ", "_").replace("/", "_") + ".log"), "ab") as log:
                    job.proc = subprocess.Popen(plan.cli(*argv), stdout=log, stderr=subprocess.STDOUT,
                                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
                job.status = "running"
            if all(j.status not in ("pending", "running") for j in jobs):
                break
            time.sleep(1.0)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    status = {j.name: j.status for j in jobs}
    (log_dir / "study-status.json").write_text(json.dumps(
        {"status": status, "seconds": {j.name: round(j.seconds, 1) for j in jobs},
         "wall_seconds": round(time.monotonic() - start, 1)}, indent=1) + "\n")
    return status


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

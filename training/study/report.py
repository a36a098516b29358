"""The robustness study: finished runs and their evaluation reports -> ``docs/robustness.md``.

What ``clead-train report`` (and ``python -m training.study``) runs.

``build_study(spec)`` reads only files: each row of the spec names a training run directory
(``summary.json``, ``config.yaml``, ``metrics.jsonl`` from ``clead-train fit``) and the
``report.json`` files ``clead-train eval`` wrote for its exported model. Nothing is
measured here and nothing is filled in: a file that is missing makes its cells read
"not run", and the summary says which comparisons are still open.

The spec (YAML; ``training.study.spec``)::

    eps: 8/255                      # threat model of the tables (attacks at other eps are ignored)
    rows:
      - {name: PGD-AT, method: pgd-at, run: runs/cifar10-pgd-at, eval: [runs/eval-pgd-at], role: main}
      - {name: "C-LEAD tau=0.1", method: clead, run: runs/abl-tau01, role: ablation}

Roles: ``main`` rows fill the per-method table and the verdict, ``previous`` rows (an earlier
recipe) a table and a verdict of their own, ``scale`` rows another table (the same methods at
another scale, e.g. full width on a GPU), ``fixed-views`` rows a control line beside the
verdict of their recipe, and ``ablation`` rows, with the candidate's own rows, the ablation
table, which shows validation numbers only (ablations are chosen on the validation split; the
test split only grades the final models). Who the verdict compares, and by which targets, is
the spec's too (``verdict:``, ``targets:``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from training.config import parse_eps
from training.evaluation.report import plot_accuracy_vs_eps, reused_runs
from training.pauses import LEDGER
from training.study.checks import TOL, Finding, cross_attack_checks, report_checks
from training.study.measures import COLUMNS, NOT_RUN, attack_of, clean_of, duration, pct
from training.study.spec import ROLES, Row, Targets, Verdict, load_row, load_spec, parse_row, validation_of
from training.study.verdict import summary


# ---------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------
def _epochs(row: Row) -> str:
    planned = (row.config or {}).get("epochs")
    if row.summary:
        return f"{row.summary.get('epochs_run')}/{planned} (best {row.summary.get('best_epoch')})"
    if row.history:
        return f"{row.history[-1].get('epoch')}/{planned}, unfinished"
    return NOT_RUN


def main_table(rows: list[Row], eps: float) -> list[str]:
    head = ["method", "clean", *[c for c, _ in COLUMNS], "images (clean / attacks)", "training wall time", "epochs",
            "hardware"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        clean = clean_of(row)
        cells = [attack_of(row, c, eps) for c, _ in COLUMNS]
        attack_n = sorted({m.n for m in cells if m})
        images = f"{clean.n} / {', '.join(map(str, attack_n)) or '-'}" if clean else NOT_RUN
        wall = wall_cell(row)
        lines.append("| " + " | ".join([f"{row.label} (`{row.method}`)", pct(clean), *map(pct, cells), images, wall,
                                         _epochs(row), hardware_cell(row)]) + " |")
    return lines


def hardware_cell(row: Row) -> str:
    """Where the run trained, and in which precision when it was not fp32 (``amp`` of run.json:
    bf16 autocast on a CPU with native bf16 makes a step several times faster, so wall times of
    fp32 and bf16 runs are not comparable)."""
    info = row.summary or row.info
    hardware = info.get("hardware") or NOT_RUN
    amp = info.get("amp")
    return f"{hardware}, {amp.replace('bfloat16', 'bf16')} autocast" if amp and amp != "fp32" else hardware


def wall_cell(row: Row) -> str:
    """The training wall time (net of recorded pauses, which are named), or how far it got."""
    wall = row.wall_seconds
    if wall is None:
        return NOT_RUN
    text = duration(wall) if row.summary else f"unfinished ({duration(wall)} so far)"
    paused = row.paused_seconds
    return text + (f" (+ {duration(paused)} paused, `{row.show(row.run / LEDGER)}`)" if paused else "")


def options_of(row: Row) -> dict:
    """The method options a run was trained with, from its saved config (the flat, prefixed
    section of older runs reads the same), or nothing when the run has no config yet."""
    from training.config import from_dict
    from training.methods import method_options

    if not row.config:
        return {}
    method = from_dict({"method": row.config.get("method") or {}}).method
    return method_options(method.name, method.options).to_dict()


def ablation_table(rows: list[Row]) -> list[str]:
    head = ["run", "role", "loss", "tau", "lambda", "proj_dim", "ce_on", "inner", "attack steps", "epochs",
            "val clean", "val robust (PGD)", "val images"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        m, a = options_of(row), (row.config or {}).get("attack", {})
        settings = [m.get(k) for k in ("loss", "tau", "weight", "proj_dim", "ce_on", "inner")] + [a.get("steps")]
        val = validation_of(row) or {}
        steps = (row.config or {}).get("val_attack_steps")
        lines.append("| " + " | ".join([row.label, row.role, *[NOT_RUN if v is None else str(v) for v in settings],
                                         _epochs(row), pct(val.get("val_clean_acc")),
                                         pct(val.get("val_robust_acc")) + (f" ({steps} steps)" if val and steps else ""),
                                         str(val.get("val_n", NOT_RUN))]) + " |")
    return lines


# ---------------------------------------------------------------------------------------
# Plot and document
# ---------------------------------------------------------------------------------------
def plot_curves(rows: list[Row], path: Path) -> Optional[Path]:
    """One worst-case accuracy-vs-eps line per method that has a curve; None if none has."""
    curves = [(row, rep["curve"]) for row in rows for _, rep in row.reports if rep.get("curve")]
    seen, picked = set(), []
    for row, curve in curves:
        if row.name not in seen:
            seen.add(row.name)
            picked.append((row, curve))
    if not picked:
        return None
    lines = []
    for row, curve in picked:
        label, ys = ("worst case", curve["accuracy"]["worst case"]) if "worst case" in curve["accuracy"] \
            else next(iter(curve["accuracy"].items()))
        lines.append((f"{row.name} ({label}, n={curve['n']})", curve["eps"], ys))
    return plot_accuracy_vs_eps(lines, path, "Accuracy vs eps, all methods", legend_size=8)


def build_study(spec: dict, root: str | Path = ".", plot_path: Optional[Path] = None
                ) -> tuple[str, list[Row], Optional[Path]]:
    """The study's markdown, the rows it read, and the curve plot if one was drawn to ``plot_path``."""
    root = Path(root)
    eps, tol = parse_eps(spec.get("eps", "8/255")), float(spec.get("tol", TOL))
    rows = [load_row(parse_row(raw, root)) for raw in spec["rows"]]
    verdict = Verdict.of(spec.get("verdict"))
    by_role = {role: [r for r in rows if r.role == role] for role in ROLES}
    main, previous, fixed = by_role["main"], by_role["previous"], by_role["fixed-views"]
    # The fixed-views control belongs to the recipe it was trained with: the previous one, if any.
    fixed_now, fixed_before = ([], fixed) if previous else (fixed, [])
    findings = _findings(spec, rows, eps, tol)

    if not (main or previous or fixed or by_role["scale"]):  # a screening spec: validation only
        return _screening(spec, eps, rows, root), rows, None
    out = [*_head(spec, eps),
           "## Summary", "", *summary(main, eps, findings, fixed_now, Targets.of(spec.get("targets")), verdict), "",
           "## Accuracy per method", "", *main_table(main + fixed_now, eps), ""]
    if previous:
        undefended = [r for r in main if r.method == verdict.undefended]
        out += _previous_section(spec, eps, undefended, previous, fixed_before, verdict)
    if by_role["scale"]:
        out += ["## At another scale", "", "Rows of role `scale` (their settings are in each run's `config.yaml` and "
                "command under *Sources*); not part of the verdict above.", "", *main_table(by_role["scale"], eps), ""]
    png = plot_curves(main + previous + fixed, plot_path) if plot_path else None
    out += ["## Accuracy vs eps", ""]
    out += [f"![accuracy vs eps]({png.name})", ""] if png else \
        ["No curve: no report has one (evaluate without `--no-curve` to draw it).", ""]
    out += _ablation_section(rows, verdict)
    out += _included(spec, root) + _sanity_section(findings, tol) + _missing_and_sources(rows)
    return "\n".join(out) + "\n", rows, png


def _screening(spec: dict, eps: float, rows: list[Row], root: Path) -> str:
    """A spec whose rows are all ablations (docs/screen.yaml): no test split, no verdict; the
    rows ranked by validation robust accuracy, each with its 95% interval."""
    ranked = sorted(rows, key=lambda r: -((validation_of(r) or {}).get("val_robust_acc") or -1))
    out = [*_head(spec, eps, test_split=False), "## Ranking (validation split)", "",
           "Each row's selected epoch (`summary.json` best epoch, from `metrics.jsonl`); +/- is the half-width of a "
           "95% interval of that one accuracy (binomial, 1.96 standard errors), so rows closer than about twice it "
           "are not told apart by this screen.", "", *screen_table(ranked), ""]
    return "\n".join(out + _included(spec, root) + _missing_and_sources(rows)) + "\n"


def screen_table(rows: list[Row]) -> list[str]:
    head = ["run", "method", "flags", "epochs", "val clean", "val robust (PGD)", "+/-", "val images", "wall time"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        val = validation_of(row) or {}
        robust, n = val.get("val_robust_acc"), val.get("val_n")
        half = f"{196 * (robust * (1 - robust) / n) ** 0.5:.1f}" if robust is not None and n else NOT_RUN
        wall = wall_cell(row)
        lines.append("| " + " | ".join([row.label, f"`{row.method}`", f"`{row.fit}`" if row.fit else "-", _epochs(row),
                                         pct(val.get("val_clean_acc")), pct(robust), half, str(n or NOT_RUN),
                                         wall]) + " |")
    return lines


def _findings(spec: dict, rows: list[Row], eps: float, tol: float) -> list[Finding]:
    """Every sanity check of the rows that have reports (the others are listed under "Not run")."""
    large_eps, large_max = parse_eps(spec.get("large_eps", "64/255")), float(spec.get("large_eps_max_accuracy", 0.05))
    tested = [r for r in rows if r.reports]
    return [f for r in tested for f in report_checks(r) + cross_attack_checks(r, eps, tol, large_eps, large_max)]


def _head(spec: dict, eps: float, test_split: bool = True) -> list[str]:
    from training.evaluation import fmt_eps

    split = "the test split" if test_split else "the validation split (held-out training images)"
    return [f"# {spec.get('title', 'Robustness study')}", "",
            f"Threat model: L-inf, eps = {fmt_eps(eps)}. Accuracies in %, on {split}; generated by "
            "`clead-train report` from the files listed under *Sources* (nothing here is typed in by hand).", "",
            *[f"- {note}" for note in spec.get("notes", [])], *([""] if spec.get("notes") else [])]


def _previous_section(spec: dict, eps: float, undefended: list[Row], previous: list[Row], fixed: list[Row],
                      verdict: Verdict) -> list[str]:
    """The previous recipe: its own verdict by the targets it had, and its table."""
    targets = Targets.of(spec.get("previous_targets", spec.get("targets")))
    own = summary(previous, eps, [], fixed, targets, verdict)[:-1]  # its sanity line: the checks are above
    return ["## Previous recipe", "", "Rows of role `previous`: the study's earlier recipe, kept for comparison with "
            "the current one (settings in each run's `config.yaml`); not part of the verdict above. "
            "Its own verdict, by the targets it had:", "", *own, "", *main_table(undefended + previous + fixed, eps), ""]


def _ablation_section(rows: list[Row], verdict: Verdict) -> list[str]:
    ablations = [r for r in rows if (r.method == verdict.candidate.method and r.role in ("main", "previous"))
                 or r.role == "ablation"]
    return [f"## {verdict.candidate.label} ablations (validation split)", "",
            "Settings from each run's `config.yaml`; accuracies on the validation split at the run's selected "
            "epoch (`summary.json` best epoch, from `metrics.jsonl`). Ablations are compared here, never on the "
            "test split.", "", *ablation_table(ablations), ""]


def _included(spec: dict, root: Path) -> list[str]:
    """Sections other evaluations write (e.g. docs/suspicion.md), verbatim."""
    out = []
    for extra in spec.get("include", []):
        path = root / extra
        out += ([path.read_text().rstrip(), ""] if path.is_file() else
                [f"## {extra}", "", f"{NOT_RUN}: `{extra}` does not exist yet.", ""])
    return out


def _sanity_section(findings: list[Finding], tol: float) -> list[str]:
    return ["## Sanity checks (Carlini et al. 2019)", "",
            f"Comparisons between randomised attacks allow {100 * tol:g} points of slack. A failed check is a finding "
            "about the evaluation, not something to tune away.", "",
            "| method | check | result | measured | source |", "|---|---|---|---|---|",
            *[f"| {f.method} | {f.check} | {'**FAILED**' if f.status == 'FAILED' else f.status} | {f.measured} "
              f"| `{f.source}` |" for f in findings]]


def _missing_and_sources(rows: list[Row]) -> list[str]:
    missing = [(r, m) for r in rows for m in r.missing]
    return (["", "## Not run", ""] + ([f"- {r.name} ({r.role}): {m}" for r, m in missing] or ["Every row has its files."])
            + ["", "## Sources", ""] + [_source_line(r) for r in rows])


def _source_line(row: Row) -> str:
    parts = [f"- {row.name}: run `{row.show(row.run)}`"]
    if row.summary:
        parts.append(f"(`{row.summary.get('command')}`, commit {str(row.summary.get('git_commit'))[:10]})")
    for path, rep in row.reports:
        env = rep.get("environment", {})
        parts[-1] += ";"
        earlier = "".join(f"; attacks reused from an earlier run: {line}" for line in reused_runs(rep.get("attacks", []), env))
        parts.append(f"eval `{row.show(path)}` (`{env.get('command')}`, {env.get('device')}, commit "
                     f"{str(env.get('git_commit'))[:10]}{earlier})")
    return " ".join(parts)


# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spec", required=True, help="study spec YAML (rows of name, method, run, eval, role)")
    p.add_argument("--out", required=True, help="markdown to write, e.g. docs/robustness.md")
    p.add_argument("--plot", default=None, help="curve PNG (default: robustness_curves.png beside --out)")
    p.add_argument("--root", default=".", help="directory the spec's run/eval paths are relative to (default: cwd)")
    p.add_argument("--strict", action="store_true", help="exit 1 if any row's files are missing")


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    plot = Path(args.plot) if args.plot else out.parent / "robustness_curves.png"
    markdown, rows, png = build_study(load_spec(args.spec), args.root, plot)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown)
    missing = [f"{r.name}: {m}" for r in rows for m in r.missing]
    for line in missing:
        print(f"not run: {line}", file=sys.stderr)
    print(f"wrote {out}" + (f" and {png}" if png else " (no curve in any report: no plot)"), file=sys.stderr)
    return 1 if args.strict and missing else 0

"""The robustness study: finished runs and their evaluation reports -> ``docs/robustness.md``.

``build_study(spec)`` reads only files: each row of the spec names a training run directory
(``summary.json``, ``config.yaml``, ``metrics.jsonl`` from ``clead-train fit``) and the
``report.json`` files ``clead-train eval`` wrote for its exported model. Nothing is
measured here and nothing is filled in: a file that is missing makes its cells read
"not run", and the summary says which comparisons are still open.

The spec (YAML)::

    eps: 8/255                      # threat model of the tables (attacks at other eps are ignored)
    rows:
      - {name: PGD-AT, method: pgd-at, run: runs/cifar10-pgd-at, eval: [runs/eval-pgd-at], role: main}
      - {name: "C-LEAD tau=0.1", method: clead, run: runs/abl-tau01, role: ablation}

Roles: ``main`` rows fill the per-method table and the verdict, ``scale`` rows a second table
(the same methods at another scale, e.g. full width on a GPU), ``ablation`` and
``fixed-views`` rows the C-LEAD ablation table, which shows validation numbers only
(ablations are chosen on the validation split; the test split only grades the final models).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Optional, Sequence

import yaml

from training.config import METHODS, parse_eps
from training.paired import paired_difference

ROLES = ("main", "ablation", "fixed-views", "scale", "previous")
ROW_KEYS = {"name", "method", "run", "eval", "role"}
MAKE_KEYS = {"fit", "ship", "artifact", "select", "views"}  # how `clead-train study` makes a row (training.campaign)
# The study's targets for C-LEAD against each adversarial baseline (points of accuracy).


@dataclass(frozen=True)
class Targets:
    """What the verdict checks; a spec sets them under ``targets:`` (and ``previous_targets:``
    for the rows of role ``previous``), these are the defaults."""

    aa_margin: float = 2.0  # C-LEAD's AutoAttack accuracy at least this many points above the baseline's
    clean_slack: float = 1.0  # C-LEAD's clean accuracy at most this many points below the baseline's
    autoattack: float = 0.38  # the shipped C-LEAD model's own AutoAttack target (fraction)
    clean: float = 0.68  # ... and its clean target

    @classmethod
    def of(cls, raw: Optional[dict]) -> "Targets":
        raw = dict(raw or {})
        valid = {f.name for f in fields(cls)}
        if set(raw) - valid:
            raise ValueError(f"spec targets: unknown key(s) {sorted(set(raw) - valid)}; valid: {', '.join(sorted(valid))}")
        return cls(**{k: float(v) for k, v in raw.items()})

TOL = 0.02  # slack (fraction of images) for comparisons between randomised attacks, as training.sanity
NOT_RUN = "not run"
APGD_PAIR = ("APGD-CE", "APGD-T")  # AutoAttack's first two attacks (columns below)

# Columns of the per-method table: (header, does this report entry belong to the column).
COLUMNS: list[tuple[str, Callable[[dict], bool]]] = [
    ("FGSM", lambda e: e["attack"] == "fgsm"),
    ("PGD-20", lambda e: e["attack"] == "pgd" and e["settings"].get("steps") == 20
     and e["settings"].get("restarts", 1) == 1),
    ("CW", lambda e: e["attack"] == "cw"),
    ("APGD-CE", lambda e: e["attack"] == "apgd-ce"),
    ("APGD-T", lambda e: e["attack"] == "apgd-t"),
    ("AutoAttack", lambda e: e["attack"] == "autoattack"),
]


# ---------------------------------------------------------------------------------------
# Spec and inputs
# ---------------------------------------------------------------------------------------
@dataclass
class Row:
    """One line of the spec, with everything its files say (``None`` where a file is missing)."""

    name: str
    method: str
    role: str
    run: Optional[Path]
    evals: list[Path]
    config: Optional[dict] = None
    summary: Optional[dict] = None
    info: dict = field(default_factory=dict)  # run.json of an unfinished run (command, hardware)
    history: list[dict] = field(default_factory=list)
    reports: list[tuple[Path, dict]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    root: Path = Path(".")

    @property
    def label(self) -> str:
        """The row's name; a run that is a link (the selected ablation run) names its target."""
        if self.run is not None and self.run.is_symlink():
            return f"{self.name} (= `{Path(os.readlink(self.run)).name}`)"
        return self.name

    def show(self, path: Optional[Path]) -> str:
        """``path`` as the spec wrote it (relative to the root), for the document."""
        if path is None:
            return "-"
        try:
            return str(Path(path).relative_to(self.root))
        except ValueError:
            return str(path)


@dataclass
class Measure:
    """One accuracy with where it came from, so that comparisons can say if images differ."""

    accuracy: float
    n: int
    source: Path
    images: str  # indices_sha1 of the report's subset
    mask: str = ""  # per-image outcome ("1" = correct/robust), for paired comparisons


def load_spec(path: str | Path) -> dict:
    spec = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(spec.get("rows"), list) or not spec["rows"]:
        raise ValueError(f"{path}: the spec needs a non-empty 'rows' list of {{name, method, run, eval, role}}")
    return spec


def _parse_row(raw: dict, root: Path) -> Row:
    if not isinstance(raw, dict) or "name" not in raw or "method" not in raw:
        raise ValueError(f"spec row {raw!r} needs at least 'name' and 'method'")
    unknown = set(raw) - ROW_KEYS - MAKE_KEYS
    if unknown:
        raise ValueError(f"spec row {raw['name']!r}: unknown key(s) {sorted(unknown)}; valid: {', '.join(sorted(ROW_KEYS | MAKE_KEYS))}")
    if raw["method"] not in METHODS:
        raise ValueError(f"spec row {raw['name']!r}: unknown method {raw['method']!r}; valid: {', '.join(METHODS)}")
    role = raw.get("role", "main")
    if role not in ROLES:
        raise ValueError(f"spec row {raw['name']!r}: unknown role {role!r}; valid: {', '.join(ROLES)}")
    evals = raw.get("eval") or []
    evals = [evals] if isinstance(evals, str) else list(evals)
    run = root / raw["run"] if raw.get("run") else None
    return Row(str(raw["name"]), raw["method"], role, run, [root / e for e in evals], root=root)


def load_row(row: Row) -> Row:
    """Read the row's run directory and reports; record each missing file in ``row.missing``."""
    if row.run is None:
        row.missing.append("no run directory given")
    elif not row.run.is_dir():
        row.missing.append(f"{row.show(row.run)}: no such run directory")
    else:
        if (row.run / "config.yaml").is_file():
            row.config = yaml.safe_load((row.run / "config.yaml").read_text())
        if (row.run / "metrics.jsonl").is_file():
            lines = (row.run / "metrics.jsonl").read_text().splitlines()
            row.history = [json.loads(line) for line in lines if line.strip()]
        if (row.run / "summary.json").is_file():
            row.summary = json.loads((row.run / "summary.json").read_text())
        else:
            row.missing.append(f"{row.show(row.run / 'summary.json')}: training unfinished "
                               f"({len(row.history)} epochs logged)")
            if (row.run / "run.json").is_file():  # an unfinished run still says where it runs
                row.info = json.loads((row.run / "run.json").read_text())
    for path in row.evals:
        file = path / "report.json" if path.is_dir() or not path.suffix else path
        if file.is_file():
            row.reports.append((file, json.loads(file.read_text())))
        else:
            row.missing.append(f"{row.show(file)}: no evaluation report")
    return row


# ---------------------------------------------------------------------------------------
# Numbers out of the files
# ---------------------------------------------------------------------------------------
def _same_eps(a: float, b: float) -> bool:
    return abs(a - b) < 1e-6


def clean_of(row: Row) -> Optional[Measure]:
    """Clean accuracy from the report that saw the most images (the whole test split, if any did)."""
    best = max(row.reports, key=lambda pr: pr[1]["clean"]["n"], default=None)
    if best is None:
        return None
    path, rep = best
    return Measure(rep["clean"]["accuracy"], rep["clean"]["n"], path, rep["data"].get("indices_sha1", ""),
                   rep["clean"].get("correct_mask", ""))


def _in_column(entry: dict, column: str, eps: float) -> bool:
    return entry.get("norm", "linf") == "linf" and _same_eps(entry["eps"], eps) and dict(COLUMNS)[column](entry)


def attack_of(row: Row, column: str, eps: float) -> Optional[Measure]:
    """The column's attack at the study eps (L-inf); the run on the most images if several."""
    found = [(e["n"], path, rep, e) for path, rep in row.reports for e in rep["attacks"] if _in_column(e, column, eps)]
    if not found:
        return None
    _, path, rep, e = max(found, key=lambda t: t[0])
    return Measure(e["accuracy"], e["n"], path, rep["data"].get("indices_sha1", ""), e.get("robust_mask", ""))


def apgd_pair_of(row: Row, eps: float) -> Optional[Measure]:
    """Per-image worst case of APGD-CE and APGD-T, AutoAttack's first two attacks: an image
    counts as robust only if it survived both on the same images (one report's masks)."""
    best = None
    for path, rep in row.reports:
        masks = [next((e["robust_mask"] for e in rep["attacks"] if _in_column(e, column, eps) and e.get("robust_mask")),
                      None) for column in APGD_PAIR]
        if None in masks or len(masks[0]) != len(masks[1]) or not masks[0]:
            continue
        n = len(masks[0])
        if best is None or n > best.n:
            both = "".join("1" if a == b == "1" else "0" for a, b in zip(*masks))
            best = Measure(both.count("1") / n, n, path, rep["data"].get("indices_sha1", ""), both)
    return best


def stand_in(row: Row, eps: float) -> tuple[str, Optional[Measure]]:
    """Until AutoAttack is measured: the strongest of our attacks it starts with, and its label."""
    pair = apgd_pair_of(row, eps)
    return ("APGD-CE + APGD-T", pair) if pair is not None else ("APGD-T", attack_of(row, "APGD-T", eps))


def validation_of(row: Row) -> Optional[dict]:
    """The logged epoch the run selected (its best epoch), else the last one logged."""
    best = (row.summary or {}).get("best_epoch")
    chosen = [h for h in row.history if h.get("epoch") == best] if best else []
    return chosen[-1] if chosen else (row.history[-1] if row.history else (row.summary or {}).get("final"))


def _pct(m: Optional[Measure | float]) -> str:
    if m is None:
        return NOT_RUN
    return f"{100 * (m.accuracy if isinstance(m, Measure) else m):.2f}"


def _duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return NOT_RUN
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def _epochs(row: Row) -> str:
    planned = (row.config or {}).get("epochs")
    if row.summary:
        return f"{row.summary.get('epochs_run')}/{planned} (best {row.summary.get('best_epoch')})"
    if row.history:
        return f"{row.history[-1].get('epoch')}/{planned}, unfinished"
    return NOT_RUN


# ---------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------
def main_table(rows: list[Row], eps: float) -> list[str]:
    head = ["method", "clean", *[c for c, _ in COLUMNS], "images (clean / attacks)", "training wall time", "epochs",
            "hardware"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        clean = clean_of(row)
        cells = [attack_of(row, c, eps) for c, _ in COLUMNS]
        attack_n = sorted({m.n for m in cells if m})
        images = f"{clean.n} / {', '.join(map(str, attack_n)) or '-'}" if clean else NOT_RUN
        wall = _duration(row.summary["wall_seconds"]) if row.summary else (
            f"unfinished ({_duration(row.history[-1]['wall_seconds'])} so far)" if row.history else NOT_RUN)
        hardware = (row.summary or row.info).get("hardware") or NOT_RUN
        lines.append("| " + " | ".join([f"{row.label} (`{row.method}`)", _pct(clean), *map(_pct, cells), images, wall,
                                         _epochs(row), hardware]) + " |")
    return lines


def ablation_table(rows: list[Row]) -> list[str]:
    head = ["run", "role", "loss", "tau", "lambda", "proj_dim", "ce_on", "inner", "attack steps", "epochs",
            "val clean", "val robust (PGD)", "val images"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        m, a = (row.config or {}).get("method", {}), (row.config or {}).get("attack", {})
        settings = [m.get(k) for k in ("clead_loss", "clead_tau", "clead_weight", "clead_proj_dim", "clead_ce_on",
                                       "clead_inner")] + [a.get("steps")]
        val = validation_of(row) or {}
        steps = (row.config or {}).get("val_attack_steps")
        lines.append("| " + " | ".join([row.label, row.role, *[NOT_RUN if v is None else str(v) for v in settings],
                                         _epochs(row), _pct(val.get("val_clean_acc")),
                                         _pct(val.get("val_robust_acc")) + (f" ({steps} steps)" if val and steps else ""),
                                         str(val.get("val_n", NOT_RUN))]) + " |")
    return lines


# ---------------------------------------------------------------------------------------
# Sanity checks (Carlini et al. 2019): the reports' own, and comparisons across attacks
# ---------------------------------------------------------------------------------------
@dataclass
class Finding:
    method: str
    check: str
    status: str  # passed | FAILED | not measured
    measured: str
    source: str


def _cmp(row: Row, name: str, low: Optional[Measure], high: Optional[Measure], low_name: str, high_name: str,
         tol: float) -> Finding:
    """``low`` should not exceed ``high`` (by more than ``tol``)."""
    if low is None or high is None:
        absent = " and ".join(n for n, m in ((low_name, low), (high_name, high)) if m is None)
        return Finding(row.name, name, "not measured", f"no {absent} result", "-")
    ok = low.accuracy <= high.accuracy + tol
    note = "" if low.images == high.images else f" (different images: n={low.n} vs n={high.n})"
    return Finding(row.name, name, "passed" if ok else "FAILED",
                   f"{low_name} {_pct(low)}%, {high_name} {_pct(high)}%{note}", row.show(low.source))


def cross_attack_checks(row: Row, eps: float, tol: float, large_eps: float, large_eps_max: float) -> list[Finding]:
    fgsm, pgd, aa = (attack_of(row, c, eps) for c in ("FGSM", "PGD-20", "AutoAttack"))
    checks = [_cmp(row, "AutoAttack no weaker than PGD-20", aa, pgd, "AutoAttack", "PGD-20", tol),
              _cmp(row, "PGD-20 no weaker than FGSM", pgd, fgsm, "PGD-20", "FGSM", tol)]
    for path, rep in row.reports:
        clean = Measure(rep["clean"]["accuracy"], rep["clean"]["n"], path, rep["data"].get("indices_sha1", ""))
        above = [e["label"] for e in rep["attacks"] if e["accuracy"] > clean.accuracy + 1e-9]
        checks.append(Finding(row.name, "robust accuracy <= clean accuracy", "FAILED" if above else "passed",
                              f"above clean {_pct(clean)}%: {', '.join(above)}" if above
                              else f"{len(rep['attacks'])} attacks <= clean {_pct(clean)}%", row.show(path)))
        checks += _budget_checks(row, path, rep, eps, tol)
        if rep.get("curve"):
            checks += _curve_checks(row, path, rep, tol, large_eps, large_eps_max)
    if not any(rep.get("curve") for _, rep in row.reports):
        checks.append(Finding(row.name, "accuracy vs eps (eps=0 = clean, ~0 at large eps)", "not measured",
                              "no report has a curve (evaluated with --no-curve)", "-"))
    return checks


def _budget_checks(row: Row, path: Path, rep: dict, eps: float, tol: float) -> list[Finding]:
    at_eps = [e for e in rep["attacks"] if e.get("norm", "linf") == "linf" and _same_eps(e["eps"], eps)]
    out = []
    square = [e for e in at_eps if e["attack"] == "square"]
    white = [e for e in at_eps if e["attack"] not in ("square", "autoattack")]
    if square and white:
        best = min(white, key=lambda e: e["accuracy"])
        ok = square[0]["accuracy"] >= best["accuracy"] - tol
        out.append(Finding(row.name, "black-box (Square) no stronger than white-box", "passed" if ok else "FAILED",
                           f"Square {_pct(square[0]['accuracy'])}%, best white-box {best['label']} "
                           f"{_pct(best['accuracy'])}%", row.show(path)))
    pgds = sorted((e for e in at_eps if e["attack"] == "pgd"),
                  key=lambda e: e["settings"].get("steps", 0) * e["settings"].get("restarts", 1))
    for weak, strong in zip(pgds, pgds[1:]):
        ok = strong["accuracy"] <= weak["accuracy"] + tol
        out.append(Finding(row.name, "more PGD steps/restarts no weaker", "passed" if ok else "FAILED",
                           f"{strong['label']} {_pct(strong['accuracy'])}%, {weak['label']} {_pct(weak['accuracy'])}%",
                           row.show(path)))
    return out


def _curve_checks(row: Row, path: Path, rep: dict, tol: float, large_eps: float, large_eps_max: float) -> list[Finding]:
    curve, out = rep["curve"], []
    eps_values, acc = curve["eps"], curve["accuracy"]
    if 0 in eps_values:
        i = eps_values.index(0)
        at0 = {label: ys[i] for label, ys in acc.items()}
        same_images = curve.get("n") == rep["clean"]["n"]
        expected = [rep["clean"]["accuracy"]] if same_images else []
        ok = len(set(at0.values()) | set(expected)) == 1
        out.append(Finding(row.name, "eps=0 leaves accuracy unchanged", "passed" if ok else "FAILED",
                           ", ".join(f"{k} {_pct(v)}%" for k, v in at0.items())
                           + (f", clean {_pct(rep['clean']['accuracy'])}%" if same_images else ""), row.show(path)))
    rising = [f"{label} {_pct(a)}% -> {_pct(b)}%" for label, ys in acc.items() for a, b in zip(ys, ys[1:]) if b > a + tol]
    out.append(Finding(row.name, "accuracy does not rise with eps", "FAILED" if rising else "passed",
                       "; ".join(rising) or f"{len(acc)} curves over eps {', '.join(f'{255 * e:g}' for e in eps_values)}/255",
                       row.show(path)))
    top = max(eps_values)
    lowest = min(ys[eps_values.index(top)] for ys in acc.values())
    if top + 1e-9 < large_eps:
        out.append(Finding(row.name, "large eps drives accuracy to ~0", "not measured",
                           f"curve ends at {255 * top:g}/255 < {255 * large_eps:g}/255 (lowest there {_pct(lowest)}%)",
                           row.show(path)))
    else:
        out.append(Finding(row.name, "large eps drives accuracy to ~0", "passed" if lowest <= large_eps_max else "FAILED",
                           f"{_pct(lowest)}% at {255 * top:g}/255 (threshold {_pct(large_eps_max)}%)", row.show(path)))
    return out


def report_checks(row: Row) -> list[Finding]:
    """The checks ``clead-train eval --sanity`` measured and stored in the report."""
    out = []
    for path, rep in row.reports:
        for c in rep.get("sanity", []):
            values = ", ".join(f"{k} {100 * v:.1f}%" for k, v in c["values"].items())
            out.append(Finding(row.name, c["name"], "passed" if c["passed"] else "FAILED", values, f"{row.show(path)} (--sanity)"))
    return out


# ---------------------------------------------------------------------------------------
# The verdict: does C-LEAD beat PGD-AT and TRADES, by the study's targets
# ---------------------------------------------------------------------------------------
def _points(a: Measure, b: Measure) -> float:
    return 100 * (a.accuracy - b.accuracy)


def difference(a: Measure, b: Measure) -> str:
    """``a`` minus ``b`` with its uncertainty: paired (bootstrap interval and McNemar) when both
    were measured on the same images with per-image masks, else an independent standard error."""
    if a.images and a.images == b.images and a.mask and len(a.mask) == len(b.mask):
        return paired_difference(a.mask, b.mask).describe()
    why = "no per-image masks" if a.images and a.images == b.images else "different images"
    return f"{_points(a, b):+.2f} points, independent standard error {_stderr_points(a, b):.2f}: not paired, {why}"


def _stderr_points(a: Measure, b: Measure) -> float:
    """Binomial standard error of the difference, in points: how much of it is sampling noise."""
    var = sum(m.accuracy * (1 - m.accuracy) / max(m.n, 1) for m in (a, b))
    return 100 * math.sqrt(var)


def summary(main: list[Row], eps: float, findings: list[Finding], fixed: Sequence[Row] = (),
            targets: Targets = Targets()) -> list[str]:
    by_method: dict[str, Row] = {}
    for row in main:
        by_method.setdefault(row.method, row)
    lines = []
    clead = by_method.get("clead")
    ca, cc = (attack_of(clead, "AutoAttack", eps), clean_of(clead)) if clead else (None, None)
    beaten, not_beaten, open_ = [], [], []
    interim: list[str] = []  # "+0.20 points vs PGD-AT on APGD-T" while AutoAttack is missing
    for method, label in (("pgd-at", "PGD-AT"), ("trades", "TRADES")):
        base = by_method.get(method)
        ba, bc = (attack_of(base, "AutoAttack", eps), clean_of(base)) if base else (None, None)
        if None in (ca, cc, ba, bc):
            absent = [n for n, r, a, c in (("C-LEAD", clead, ca, cc), (label, base, ba, bc)) if r is None or None in (a, c)]
            open_.append(label)
            text, gap = _interim(clead, base, label, eps)
            if gap:
                interim.append(gap)
            lines.append(f"- vs {label}: not measured: no clean and AutoAttack accuracy for {' and '.join(absent)} "
                         f"({NOT_RUN})." + text)
            continue
        d_aa, d_clean = _points(ca, ba), _points(cc, bc)
        aa_ok, clean_ok = d_aa >= targets.aa_margin - 1e-9, d_clean >= -targets.clean_slack - 1e-9  # 1e-9: float noise of k/n
        (beaten if aa_ok and clean_ok else not_beaten).append(label)
        lines.append(f"- vs {label}: AutoAttack {_pct(ca)}% vs {_pct(ba)}% ({difference(ca, ba)}; "
                     f"target >= +{targets.aa_margin:g}: {'met' if aa_ok else '**not met**'}); "
                     f"clean {_pct(cc)}% vs {_pct(bc)}% ({difference(cc, bc)}; target >= -{targets.clean_slack:g}: "
                     f"{'met' if clean_ok else '**not met**'}); {_cost(clead, base)}.")
    if not_beaten:
        head = f"**C-LEAD does not beat {' or '.join(not_beaten)} here** by the study's targets" + (
            f" (it does beat {' and '.join(beaten)})." if beaten else ".")
    elif beaten and not open_:
        head = f"**C-LEAD beats {' and '.join(beaten)} here** by the study's targets."
    elif beaten:
        head = f"**C-LEAD beats {' and '.join(beaten)} here**; the comparison with {', '.join(open_)} is open (not run)."
    else:
        head = "**No verdict yet**: the runs the comparison needs are missing (see *Not run*)."
        if interim:
            head += (f" Meanwhile, on attacks that AutoAttack itself runs, C-LEAD minus {'; minus '.join(interim)}; "
                     f"against the study's target of +{targets.aa_margin:g} points under AutoAttack.")
    if clead is not None and cc is not None:  # the shipped model's own targets
        tag = lambda ok: "met" if ok else "**not met**"  # noqa: E731
        if ca is not None:
            lines.append(f"- C-LEAD's own targets: AutoAttack {_pct(ca)}% (target >= {100 * targets.autoattack:g}%: "
                         f"{tag(ca.accuracy >= targets.autoattack)}), clean {_pct(cc)}% (target >= "
                         f"{100 * targets.clean:g}%: {tag(cc.accuracy >= targets.clean)}).")
        else:
            what, ct = stand_in(clead, eps)
            bound = "" if ct is None else (f"; {what} {'alone leaves' if what == 'APGD-T' else 'leave'} {_pct(ct)}%, "
                                           + ("already below" if ct.accuracy < targets.autoattack else "above") + " that target")
            lines.append(f"- C-LEAD's own targets: AutoAttack {NOT_RUN} (target >= {100 * targets.autoattack:g}%{bound}); "
                         f"clean {_pct(cc)}% (target >= {100 * targets.clean:g}%: {tag(cc.accuracy >= targets.clean)}).")
    for row in fixed:  # the control: what the online inner maximisation adds
        column = next((c for c in ("AutoAttack", "APGD-T") if clead and attack_of(row, c, eps)
                       and attack_of(clead, c, eps)), None)
        if column is None:
            lines.append(f"- {row.name} (control): not measured against C-LEAD ({NOT_RUN}).")
            continue
        fa, oa, fc = attack_of(row, column, eps), attack_of(clead, column, eps), clean_of(row)
        lines.append(f"- {row.name} (control): {column} {_pct(fa)}% vs {_pct(oa)}% for C-LEAD with its online "
                     f"inner maximisation ({_points(fa, oa):+.2f} points), clean {_pct(fc)}% (n={fc.n}).")
    failed = [f for f in findings if f.status == "FAILED"]
    tail = [f"- Sanity checks: {sum(f.status == 'passed' for f in findings)} passed, {len(failed)} failed, "
            f"{sum(f.status == 'not measured' for f in findings)} not measured."]
    if failed:
        tail.append("- **Failed checks** (the robust accuracies they concern may be overstated): "
                    + "; ".join(f"{f.method}: {f.check}" for f in failed) + ".")
    return [head, "", *lines, *tail]


def _interim(clead: Optional[Row], base: Optional[Row], label: str, eps: float) -> tuple[str, str]:
    """Until AutoAttack is measured: the same comparison on the strongest of our attacks that
    AutoAttack starts with (APGD-CE + APGD-T per image if both rows have them, else APGD-T)."""
    if clead is None or base is None:
        return "", ""
    (what, ct), (base_what, bt) = stand_in(clead, eps), stand_in(base, eps)
    if what != base_what:
        what, ct, bt = "APGD-T", attack_of(clead, "APGD-T", eps), attack_of(base, "APGD-T", eps)
    cc, bc = clean_of(clead), clean_of(base)
    if None in (ct, bt, cc, bc):
        return "", ""
    how = ("targeted, 9 classes x 100 steps; AutoAttack runs the same attack and three more" if what == "APGD-T" else
           "an image counts only if it survives both; AutoAttack starts with these two and adds FAB-T and Square")
    return (f" Meanwhile, on our {what} ({how}, so its accuracy is expected at or below this): C-LEAD {_pct(ct)}% "
            f"vs {label} {_pct(bt)}% ({difference(ct, bt)}), "
            f"clean {_pct(cc)}% vs {_pct(bc)}% ({_points(cc, bc):+.2f} points).",
            f"{label} on {what}: {difference(ct, bt)}")


def _cost(clead: Row, base: Row) -> str:
    a, b = (r.summary.get("wall_seconds") if r.summary else None for r in (clead, base))
    if not a or not b:
        return "training wall time: not comparable (a run is unfinished)"
    text = f"training wall time {a / b:.2f}x ({_duration(a)} vs {_duration(b)})"
    ha, hb = clead.summary.get("hardware"), base.summary.get("hardware")
    return text if ha == hb else text + f", **on different hardware** ({ha} vs {hb})"


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for row, curve in picked:
        label, ys = ("worst case", curve["accuracy"]["worst case"]) if "worst case" in curve["accuracy"] \
            else next(iter(curve["accuracy"].items()))
        ax.plot([255 * e for e in curve["eps"]], [100 * y for y in ys], marker="o",
                label=f"{row.name} ({label}, n={curve['n']})")
    ax.set_xlabel("eps (L-inf, x/255)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Accuracy vs eps, all methods")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def build_study(spec: dict, root: str | Path = ".", plot_path: Optional[Path] = None
                ) -> tuple[str, list[Row], Optional[Path]]:
    """The study's markdown, the rows it read, and the curve plot if one was drawn to ``plot_path``."""
    from training.evaluation import fmt_eps

    root = Path(root)
    eps = parse_eps(spec.get("eps", "8/255"))
    tol = float(spec.get("tol", TOL))
    large_eps, large_max = parse_eps(spec.get("large_eps", "64/255")), float(spec.get("large_eps_max_accuracy", 0.05))
    rows = [load_row(_parse_row(raw, root)) for raw in spec["rows"]]
    main = [r for r in rows if r.role == "main"]
    previous = [r for r in rows if r.role == "previous"]
    # The fixed-views control belongs to the recipe it was trained with: the previous one, if any.
    fixed = [r for r in rows if r.role == "fixed-views"]
    fixed_now, fixed_before = ([], fixed) if previous else (fixed, [])
    tested = [r for r in rows if r.reports]  # rows without reports are listed under "Not run"
    findings = [f for r in tested for f in report_checks(r) + cross_attack_checks(r, eps, tol, large_eps, large_max)]

    out = [f"# {spec.get('title', 'Robustness study')}", "",
           f"Threat model: L-inf, eps = {fmt_eps(eps)}. Accuracies in %, on the test split; generated by "
           "`python -m training.study` from the files listed under *Sources* (nothing here is typed in by hand).", "",
           *[f"- {note}" for note in spec.get("notes", [])], *([""] if spec.get("notes") else []),
           "## Summary", "", *summary(main, eps, findings, fixed_now, Targets.of(spec.get("targets"))), "",
           "## Accuracy per method", "", *main_table(main + fixed_now, eps), ""]
    if previous:
        undefended = [r for r in main if r.method == "standard"]
        verdict = summary(previous, eps, [], fixed_before,
                          Targets.of(spec.get("previous_targets", spec.get("targets"))))[:-1]  # sanity: above
        out += ["## Previous recipe", "", "Rows of role `previous`: the study's earlier recipe, kept for comparison with "
                "the current one (settings in each run's `config.yaml`); not part of the verdict above. "
                "Its own verdict, by the targets it had:", "", *verdict, "",
                *main_table(undefended + previous + fixed_before, eps), ""]
    scale = [r for r in rows if r.role == "scale"]
    if scale:
        out += ["## At another scale", "", "Rows of role `scale` (their settings are in each run's `config.yaml` and "
                "command under *Sources*); not part of the verdict above.", "", *main_table(scale, eps), ""]
    png = plot_curves(main + previous + fixed, plot_path) if plot_path else None
    out += ["## Accuracy vs eps", ""]
    out += [f"![accuracy vs eps]({png.name})", ""] if png else \
        ["No curve: no report has one (evaluate without `--no-curve` to draw it).", ""]
    ablations = [r for r in rows if (r.method == "clead" and r.role in ("main", "previous")) or r.role == "ablation"]
    out += ["## C-LEAD ablations (validation split)", "",
            "Settings from each run's `config.yaml`; accuracies on the validation split at the run's selected "
            "epoch (`summary.json` best epoch, from `metrics.jsonl`). Ablations are compared here, never on the "
            "test split.", "", *ablation_table(ablations), ""]
    for extra in spec.get("include", []):  # sections other evaluations write (e.g. docs/suspicion.md), verbatim
        path = root / extra
        out += ([path.read_text().rstrip(), ""] if path.is_file() else
                [f"## {extra}", "", f"{NOT_RUN}: `{extra}` does not exist yet.", ""])
    out += ["## Sanity checks (Carlini et al. 2019)", "",
            f"Comparisons between randomised attacks allow {100 * tol:g} points of slack. A failed check is a finding "
            "about the evaluation, not something to tune away.", "",
            "| method | check | result | measured | source |", "|---|---|---|---|---|"]
    out += [f"| {f.method} | {f.check} | {'**FAILED**' if f.status == 'FAILED' else f.status} | {f.measured} "
            f"| `{f.source}` |" for f in findings]
    missing = [(r, m) for r in rows for m in r.missing]
    out += ["", "## Not run", ""] + ([f"- {r.name} ({r.role}): {m}" for r, m in missing] or ["Every row has its files."])
    out += ["", "## Sources", ""] + [_source_line(r) for r in rows]
    return "\n".join(out) + "\n", rows, png


def _source_line(row: Row) -> str:
    parts = [f"- {row.name}: run `{row.show(row.run)}`"]
    if row.summary:
        parts.append(f"(`{row.summary.get('command')}`, commit {str(row.summary.get('git_commit'))[:10]})")
    for path, rep in row.reports:
        env = rep.get("environment", {})
        parts[-1] += ";"
        parts.append(f"eval `{row.show(path)}` (`{env.get('command')}`, {env.get('device')}, commit "
                     f"{str(env.get('git_commit'))[:10]})")
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.study", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

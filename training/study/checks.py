"""Sanity checks of an evaluation (Carlini et al. 2019, "On Evaluating Adversarial Robustness").

Two kinds, both read from the reports: the checks ``clead-train eval --sanity`` measured and
stored (``report_checks``), and comparisons across the attacks a report holds
(``cross_attack_checks``): a stronger attack must not leave more images robust than a weaker
one, robust accuracy stays at or below clean accuracy, and an accuracy-vs-eps curve starts at the
clean accuracy, does not rise and reaches about 0 at a large eps. A failed check is a finding
about the evaluation, not something to tune away.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from training.study.measures import Measure, attack_of, pct, same_eps
from training.study.spec import Row

TOL = 0.02  # slack (fraction of images) for comparisons between randomised attacks, as training.sanity


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
                   f"{low_name} {pct(low)}%, {high_name} {pct(high)}%{note}", row.show(low.source))


def cross_attack_checks(row: Row, eps: float, tol: float, large_eps: float, large_eps_max: float) -> list[Finding]:
    fgsm, pgd, aa = (attack_of(row, c, eps) for c in ("FGSM", "PGD-20", "AutoAttack"))
    checks = [_cmp(row, "AutoAttack no weaker than PGD-20", aa, pgd, "AutoAttack", "PGD-20", tol),
              _cmp(row, "PGD-20 no weaker than FGSM", pgd, fgsm, "PGD-20", "FGSM", tol)]
    for path, rep in row.reports:
        clean = Measure(rep["clean"]["accuracy"], rep["clean"]["n"], path, rep["data"].get("indices_sha1", ""))
        above = [e["label"] for e in rep["attacks"] if e["accuracy"] > clean.accuracy + 1e-9]
        checks.append(Finding(row.name, "robust accuracy <= clean accuracy", "FAILED" if above else "passed",
                              f"above clean {pct(clean)}%: {', '.join(above)}" if above
                              else f"{len(rep['attacks'])} attacks <= clean {pct(clean)}%", row.show(path)))
        checks += _budget_checks(row, path, rep, eps, tol)
        if rep.get("curve"):
            checks += _curve_checks(row, path, rep, tol, large_eps, large_eps_max)
    if not any(rep.get("curve") for _, rep in row.reports):
        checks.append(Finding(row.name, "accuracy vs eps (eps=0 = clean, ~0 at large eps)", "not measured",
                              "no report has a curve (evaluated with --no-curve)", "-"))
    return checks


def _budget_checks(row: Row, path: Path, rep: dict, eps: float, tol: float) -> list[Finding]:
    at_eps = [e for e in rep["attacks"] if e.get("norm", "linf") == "linf" and same_eps(e["eps"], eps)]
    out = []
    square = [e for e in at_eps if e["attack"] == "square"]
    white = [e for e in at_eps if e["attack"] not in ("square", "autoattack")]
    if square and white:
        best = min(white, key=lambda e: e["accuracy"])
        ok = square[0]["accuracy"] >= best["accuracy"] - tol
        out.append(Finding(row.name, "black-box (Square) no stronger than white-box", "passed" if ok else "FAILED",
                           f"Square {pct(square[0]['accuracy'])}%, best white-box {best['label']} "
                           f"{pct(best['accuracy'])}%", row.show(path)))
    pgds = sorted((e for e in at_eps if e["attack"] == "pgd"),
                  key=lambda e: e["settings"].get("steps", 0) * e["settings"].get("restarts", 1))
    for weak, strong in zip(pgds, pgds[1:]):
        ok = strong["accuracy"] <= weak["accuracy"] + tol
        out.append(Finding(row.name, "more PGD steps/restarts no weaker", "passed" if ok else "FAILED",
                           f"{strong['label']} {pct(strong['accuracy'])}%, {weak['label']} {pct(weak['accuracy'])}%",
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
                           ", ".join(f"{k} {pct(v)}%" for k, v in at0.items())
                           + (f", clean {pct(rep['clean']['accuracy'])}%" if same_images else ""), row.show(path)))
    rising = [f"{label} {pct(a)}% -> {pct(b)}%" for label, ys in acc.items() for a, b in zip(ys, ys[1:]) if b > a + tol]
    out.append(Finding(row.name, "accuracy does not rise with eps", "FAILED" if rising else "passed",
                       "; ".join(rising) or f"{len(acc)} curves over eps {', '.join(f'{255 * e:g}' for e in eps_values)}/255",
                       row.show(path)))
    top = max(eps_values)
    lowest = min(ys[eps_values.index(top)] for ys in acc.values())
    if top + 1e-9 < large_eps:
        out.append(Finding(row.name, "large eps drives accuracy to ~0", "not measured",
                           f"curve ends at {255 * top:g}/255 < {255 * large_eps:g}/255 (lowest there {pct(lowest)}%)",
                           row.show(path)))
    else:
        out.append(Finding(row.name, "large eps drives accuracy to ~0", "passed" if lowest <= large_eps_max else "FAILED",
                           f"{pct(lowest)}% at {255 * top:g}/255 (threshold {pct(large_eps_max)}%)", row.show(path)))
    return out


def report_checks(row: Row) -> list[Finding]:
    """The checks ``clead-train eval --sanity`` measured and stored in the report."""
    out = []
    for path, rep in row.reports:
        for c in rep.get("sanity", []):
            values = ", ".join(f"{k} {100 * v:.1f}%" for k, v in c["values"].items())
            out.append(Finding(row.name, c["name"], "passed" if c["passed"] else "FAILED", values, f"{row.show(path)} (--sanity)"))
    return out


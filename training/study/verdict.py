"""The verdict: does C-LEAD beat the adversarial baselines, by the study's targets.

Compares the candidate's clean and AutoAttack accuracy with each baseline's (paired when both
were measured on the same images with per-image masks), checks the candidate's own targets and
the fixed-views control, and counts the sanity findings. Until AutoAttack is measured it says so
and compares on the strongest attacks AutoAttack starts with instead.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

from training.paired import paired_difference
from training.study.checks import Finding
from training.study.measures import NOT_RUN, Measure, attack_of, clean_of, duration, pct, stand_in
from training.study.spec import Row, Targets


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
        lines.append(f"- vs {label}: AutoAttack {pct(ca)}% vs {pct(ba)}% ({difference(ca, ba)}; "
                     f"target >= +{targets.aa_margin:g}: {'met' if aa_ok else '**not met**'}); "
                     f"clean {pct(cc)}% vs {pct(bc)}% ({difference(cc, bc)}; target >= -{targets.clean_slack:g}: "
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
            lines.append(f"- C-LEAD's own targets: AutoAttack {pct(ca)}% (target >= {100 * targets.autoattack:g}%: "
                         f"{tag(ca.accuracy >= targets.autoattack)}), clean {pct(cc)}% (target >= "
                         f"{100 * targets.clean:g}%: {tag(cc.accuracy >= targets.clean)}).")
        else:
            what, ct = stand_in(clead, eps)
            bound = "" if ct is None else (f"; {what} {'alone leaves' if what == 'APGD-T' else 'leave'} {pct(ct)}%, "
                                           + ("already below" if ct.accuracy < targets.autoattack else "above") + " that target")
            lines.append(f"- C-LEAD's own targets: AutoAttack {NOT_RUN} (target >= {100 * targets.autoattack:g}%{bound}); "
                         f"clean {pct(cc)}% (target >= {100 * targets.clean:g}%: {tag(cc.accuracy >= targets.clean)}).")
    for row in fixed:  # the control: what the online inner maximisation adds
        column = next((c for c in ("AutoAttack", "APGD-T") if clead and attack_of(row, c, eps)
                       and attack_of(clead, c, eps)), None)
        if column is None:
            lines.append(f"- {row.name} (control): not measured against C-LEAD ({NOT_RUN}).")
            continue
        fa, oa, fc = attack_of(row, column, eps), attack_of(clead, column, eps), clean_of(row)
        lines.append(f"- {row.name} (control): {column} {pct(fa)}% vs {pct(oa)}% for C-LEAD with its online "
                     f"inner maximisation ({_points(fa, oa):+.2f} points), clean {pct(fc)}% (n={fc.n}).")
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
    return (f" Meanwhile, on our {what} ({how}, so its accuracy is expected at or below this): C-LEAD {pct(ct)}% "
            f"vs {label} {pct(bt)}% ({difference(ct, bt)}), "
            f"clean {pct(cc)}% vs {pct(bc)}% ({_points(cc, bc):+.2f} points).",
            f"{label} on {what}: {difference(ct, bt)}")


def _cost(clead: Row, base: Row) -> str:
    a, b = (r.summary.get("wall_seconds") if r.summary else None for r in (clead, base))
    if not a or not b:
        return "training wall time: not comparable (a run is unfinished)"
    text = f"training wall time {a / b:.2f}x ({duration(a)} vs {duration(b)})"
    ha, hb = clead.summary.get("hardware"), base.summary.get("hardware")
    return text if ha == hb else text + f", **on different hardware** ({ha} vs {hb})"

"""The verdict: does the candidate (C-LEAD) beat the baselines (PGD-AT, TRADES), by the study's targets.

Who is compared and by which targets is the spec's (``verdict:``, ``targets:``; ``training.study.spec``).
Compares the candidate's clean and AutoAttack accuracy with each baseline's (paired when both
were measured on the same images with per-image masks), checks the candidate's own targets and
the fixed-views control, and counts the sanity findings. Until AutoAttack is measured it says so
and compares on the strongest attacks AutoAttack starts with instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Optional, Sequence

from training.paired import paired_difference
from training.study.checks import Finding
from training.study.measures import NOT_RUN, Measure, attack_of, clean_of, duration, pct, stand_in
from training.study.spec import Contender, Row, Targets, Verdict


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


@dataclass
class _Side:
    """One side of a comparison: a contender's label, its row (if the spec has one) and its numbers."""

    label: str
    row: Optional[Row]
    aa: Optional[Measure] = None  # AutoAttack accuracy
    clean: Optional[Measure] = None

    @property
    def measured(self) -> bool:
        return self.row is not None and self.aa is not None and self.clean is not None


def _side(by_method: dict[str, Row], contender: Contender, eps: float) -> _Side:
    row = by_method.get(contender.method)
    if row is None:
        return _Side(contender.label, None)
    return _Side(contender.label, row, attack_of(row, "AutoAttack", eps), clean_of(row))


class _Comparison(NamedTuple):
    label: str  # the baseline's
    line: str  # its line of the summary
    status: str  # beaten | not beaten | open (not measured)
    gap: str = ""  # while open: the candidate's gap on the attack AutoAttack starts with, for the head line


def summary(main: list[Row], eps: float, findings: list[Finding], fixed: Sequence[Row] = (),
            targets: Targets = Targets(), verdict: Verdict = Verdict()) -> list[str]:
    """The verdict of ``main``'s rows (the first row of each method the verdict names): the head
    line, one line per baseline, the candidate's own targets, the fixed-views control and the
    sanity checks."""
    by_method: dict[str, Row] = {}
    for row in main:
        by_method.setdefault(row.method, row)
    candidate = _side(by_method, verdict.candidate, eps)
    comparisons = [_versus(candidate, _side(by_method, b, eps), eps, targets) for b in verdict.baselines]
    lines = [c.line for c in comparisons] + _own_targets(candidate, eps, targets)
    lines += [_control(row, candidate, eps) for row in fixed]
    return [_head(candidate.label, comparisons, targets), "", *lines, *_sanity_lines(findings)]


def _versus(candidate: _Side, base: _Side, eps: float, targets: Targets) -> _Comparison:
    """The candidate against one baseline: AutoAttack and clean accuracy, each by its target."""
    if not (candidate.measured and base.measured):
        absent = [side.label for side in (candidate, base) if not side.measured]
        text, gap = _interim(candidate, base, eps)
        return _Comparison(base.label, f"- vs {base.label}: not measured: no clean and AutoAttack accuracy for "
                           f"{' and '.join(absent)} ({NOT_RUN})." + text, "open", gap)
    (ca, cc), (ba, bc) = (candidate.aa, candidate.clean), (base.aa, base.clean)
    d_aa, d_clean = _points(ca, ba), _points(cc, bc)
    aa_ok, clean_ok = d_aa >= targets.aa_margin - 1e-9, d_clean >= -targets.clean_slack - 1e-9  # 1e-9: float noise of k/n
    line = (f"- vs {base.label}: AutoAttack {pct(ca)}% vs {pct(ba)}% ({difference(ca, ba)}; "
            f"target >= +{targets.aa_margin:g}: {_tag(aa_ok)}); "
            f"clean {pct(cc)}% vs {pct(bc)}% ({difference(cc, bc)}; target >= -{targets.clean_slack:g}: "
            f"{_tag(clean_ok)}); {_cost(candidate.row, base.row)}.")
    return _Comparison(base.label, line, "beaten" if aa_ok and clean_ok else "not beaten")


def _tag(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _head(label: str, comparisons: list[_Comparison], targets: Targets) -> str:
    """The verdict in one line: whom the candidate beats and does not, or what is still open."""
    beaten, not_beaten, open_ = ([c.label for c in comparisons if c.status == s] for s in ("beaten", "not beaten", "open"))
    if not_beaten:
        return f"**{label} does not beat {' or '.join(not_beaten)} here** by the study's targets" + (
            f" (it does beat {' and '.join(beaten)})." if beaten else ".")
    if beaten and not open_:
        return f"**{label} beats {' and '.join(beaten)} here** by the study's targets."
    if beaten:
        return f"**{label} beats {' and '.join(beaten)} here**; the comparison with {', '.join(open_)} is open (not run)."
    head = "**No verdict yet**: the runs the comparison needs are missing (see *Not run*)."
    interim = [c.gap for c in comparisons if c.gap]  # "PGD-AT on APGD-T: +0.20 points ..." while AutoAttack is missing
    if interim:
        head += (f" Meanwhile, on attacks that AutoAttack itself runs, {label} minus {'; minus '.join(interim)}; "
                 f"against the study's target of +{targets.aa_margin:g} points under AutoAttack.")
    return head


def _own_targets(candidate: _Side, eps: float, targets: Targets) -> list[str]:
    """The candidate's (the shipped model's) own AutoAttack and clean targets; until AutoAttack
    is measured, where the attacks it starts with already leave it."""
    if candidate.row is None or candidate.clean is None:
        return []
    aa, clean = candidate.aa, candidate.clean
    clean_text = f"clean {pct(clean)}% (target >= {100 * targets.clean:g}%: {_tag(clean.accuracy >= targets.clean)})."
    if aa is not None:
        return [f"- {candidate.label}'s own targets: AutoAttack {pct(aa)}% (target >= {100 * targets.autoattack:g}%: "
                f"{_tag(aa.accuracy >= targets.autoattack)}), {clean_text}"]
    what, ct = stand_in(candidate.row, eps)
    bound = "" if ct is None else (f"; {what} {'alone leaves' if what == 'APGD-T' else 'leave'} {pct(ct)}%, "
                                   + ("already below" if ct.accuracy < targets.autoattack else "above") + " that target")
    return [f"- {candidate.label}'s own targets: AutoAttack {NOT_RUN} (target >= {100 * targets.autoattack:g}%{bound}); "
            f"{clean_text}"]


def _control(row: Row, candidate: _Side, eps: float) -> str:
    """The fixed-views control against the candidate: what the online inner maximisation adds."""
    online = candidate.row
    column = next((c for c in ("AutoAttack", "APGD-T") if online and attack_of(row, c, eps)
                   and attack_of(online, c, eps)), None)
    if column is None:
        return f"- {row.name} (control): not measured against {candidate.label} ({NOT_RUN})."
    fa, oa, fc = attack_of(row, column, eps), attack_of(online, column, eps), clean_of(row)
    return (f"- {row.name} (control): {column} {pct(fa)}% vs {pct(oa)}% for {candidate.label} with its online "
            f"inner maximisation ({_points(fa, oa):+.2f} points), clean {pct(fc)}% (n={fc.n}).")


def _sanity_lines(findings: list[Finding]) -> list[str]:
    failed = [f for f in findings if f.status == "FAILED"]
    lines = [f"- Sanity checks: {sum(f.status == 'passed' for f in findings)} passed, {len(failed)} failed, "
             f"{sum(f.status == 'not measured' for f in findings)} not measured."]
    if failed:
        lines.append("- **Failed checks** (the robust accuracies they concern may be overstated): "
                     + "; ".join(f"{f.method}: {f.check}" for f in failed) + ".")
    return lines


def _interim(candidate: _Side, base: _Side, eps: float) -> tuple[str, str]:
    """Until AutoAttack is measured: the same comparison on the strongest of our attacks that
    AutoAttack starts with (APGD-CE + APGD-T per image if both rows have them, else APGD-T)."""
    if candidate.row is None or base.row is None:
        return "", ""
    (what, ct), (base_what, bt) = stand_in(candidate.row, eps), stand_in(base.row, eps)
    if what != base_what:
        what, ct, bt = "APGD-T", attack_of(candidate.row, "APGD-T", eps), attack_of(base.row, "APGD-T", eps)
    cc, bc = clean_of(candidate.row), clean_of(base.row)
    if None in (ct, bt, cc, bc):
        return "", ""
    how = ("targeted, 9 classes x 100 steps; AutoAttack runs the same attack and three more" if what == "APGD-T" else
           "an image counts only if it survives both; AutoAttack starts with these two and adds FAB-T and Square")
    return (f" Meanwhile, on our {what} ({how}, so its accuracy is expected at or below this): {candidate.label} "
            f"{pct(ct)}% vs {base.label} {pct(bt)}% ({difference(ct, bt)}), "
            f"clean {pct(cc)}% vs {pct(bc)}% ({_points(cc, bc):+.2f} points).",
            f"{base.label} on {what}: {difference(ct, bt)}")


def _cost(candidate: Row, base: Row) -> str:
    a, b = (r.wall_seconds if r.summary else None for r in (candidate, base))
    if not a or not b:
        return "training wall time: not comparable (a run is unfinished)"
    text = f"training wall time {a / b:.2f}x ({duration(a)} vs {duration(b)})"
    ha, hb = candidate.summary.get("hardware"), base.summary.get("hardware")
    return text if ha == hb else text + f", **on different hardware** ({ha} vs {hb})"

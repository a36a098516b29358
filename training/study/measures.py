"""Numbers out of a row's evaluation reports, with where each came from, and how cells print them.

A report (``clead-train eval``) lists attack entries at several eps and image counts; the study
reads the L-inf ones at its own eps, and where several reports have the same attack, the one on
the most images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from training.study.spec import Row

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


@dataclass
class Measure:
    """One accuracy with where it came from, so that comparisons can say if images differ."""

    accuracy: float
    n: int
    source: Path
    images: str  # indices_sha1 of the report's subset
    mask: str = ""  # per-image outcome ("1" = correct/robust), for paired comparisons


def same_eps(a: float, b: float) -> bool:
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
    return entry.get("norm", "linf") == "linf" and same_eps(entry["eps"], eps) and dict(COLUMNS)[column](entry)


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


def pct(m: Optional[Measure | float]) -> str:
    """An accuracy (a ``Measure`` or a fraction) as a table cell, in %."""
    if m is None:
        return NOT_RUN
    return f"{100 * (m.accuracy if isinstance(m, Measure) else m):.2f}"


def duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return NOT_RUN
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"

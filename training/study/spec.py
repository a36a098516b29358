"""The study spec (``docs/study.yaml``) and what each row's files say.

Both halves of the study read it: ``training.study.run`` makes the rows' runs and reports,
``training.study.report`` writes the document from them. A row names its run directory and
evaluation reports (``ROW_KEYS``) and how ``clead-train study`` makes them (``MAKE_KEYS``)::

    - {name: PGD-AT, method: pgd-at, run: runs/cifar10-pgd-at, eval: [runs/eval-pgd-at], role: main,
       fit: "", artifact: runs/cifar10-pgd-at/model.pt}

What the report's verdict compares is data of the spec too: ``verdict:`` (``Verdict``: the
candidate, the baselines) and ``targets:`` / ``previous_targets:`` (``Targets``); a spec without
them asks the study's question (C-LEAD against PGD-AT and TRADES) by the default targets.

``load_row`` reads only files: one that is missing is recorded in ``Row.missing`` and its cells
read "not run" in the report; nothing is filled in.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Optional

import yaml

from training.methods import method_names

ROLES = ("main", "ablation", "fixed-views", "scale", "previous")
ROW_KEYS = {"name", "method", "run", "eval", "role"}
MAKE_KEYS = {"fit", "ship", "artifact", "select", "views"}  # how `clead-train study` makes a row (training.study.run)


def _known_keys(raw: Optional[dict], cls: type, where: str) -> dict:
    """``raw`` (a mapping of the spec, or nothing) as a dict whose keys are fields of ``cls``."""
    raw = dict(raw or {})
    valid = {f.name for f in fields(cls)}
    if set(raw) - valid:
        raise ValueError(f"spec {where}: unknown key(s) {sorted(set(raw) - valid)}; valid: {', '.join(sorted(valid))}")
    return raw


def _method(name: object, where: str) -> str:
    if name not in method_names():
        raise ValueError(f"spec {where}: unknown method {name!r}; valid: {', '.join(method_names())}")
    return str(name)


@dataclass(frozen=True)
class Targets:
    """What the verdict checks; a spec sets them under ``targets:`` (and ``previous_targets:``
    for the rows of role ``previous``), these are the defaults."""

    aa_margin: float = 2.0  # the candidate's AutoAttack accuracy at least this many points above the baseline's
    clean_slack: float = 1.0  # the candidate's clean accuracy at most this many points below the baseline's
    autoattack: float = 0.38  # the candidate's own AutoAttack target (fraction)
    clean: float = 0.68  # ... and its clean target

    @classmethod
    def of(cls, raw: Optional[dict]) -> "Targets":
        return cls(**{k: float(v) for k, v in _known_keys(raw, cls, "targets").items()})


@dataclass(frozen=True)
class Contender:
    """A method the verdict compares, and what the summary calls it."""

    method: str
    label: str

    @classmethod
    def of(cls, raw: object, where: str) -> "Contender":
        if not isinstance(raw, dict) or set(raw) != {"method", "label"}:
            raise ValueError(f"spec {where}: {raw!r} should be {{method: ..., label: ...}}")
        return cls(_method(raw["method"], where), str(raw["label"]))


@dataclass(frozen=True)
class Verdict:
    """Who the summary compares: in each verdict (the rows of role ``main``, and those of role
    ``previous`` for the previous recipe's own), the first row of the candidate's method against
    the first row of each baseline's; a baseline without a row is an open comparison. A spec sets
    them under ``verdict:``; these defaults are the study's question (C-LEAD vs PGD-AT and TRADES)."""

    candidate: Contender = Contender("clead", "C-LEAD")  # its rows (main, previous) also head the ablation table
    baselines: tuple[Contender, ...] = (Contender("pgd-at", "PGD-AT"), Contender("trades", "TRADES"))
    undefended: str = "standard"  # rows of role main with this method head the previous recipe's table too

    @classmethod
    def of(cls, raw: Optional[dict]) -> "Verdict":
        raw = _known_keys(raw, cls, "verdict")
        if "candidate" in raw:
            raw["candidate"] = Contender.of(raw["candidate"], "verdict candidate")
        if "baselines" in raw:
            raw["baselines"] = tuple(Contender.of(b, "verdict baselines") for b in raw["baselines"] or [])
        if "undefended" in raw:
            raw["undefended"] = _method(raw["undefended"], "verdict undefended")
        return cls(**raw)


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
    fit: str = ""  # the row's own flags of clead-train fit (after the spec's fit_common)

    @property
    def label(self) -> str:
        """The row's name; a run that is a link (the selected ablation run) names its target."""
        if self.run is not None and self.run.is_symlink():
            return f"{self.name} (= `{Path(os.readlink(self.run)).name}`)"
        return self.name

    @property
    def paused_seconds(self) -> float:
        """Pauses recorded with ``clead-train pause`` (``training.pauses``), not part of the cost."""
        from training.pauses import paused_seconds

        return paused_seconds(self.run) if self.run is not None and self.run.is_dir() else 0.0

    @property
    def wall_seconds(self) -> Optional[float]:
        """The training wall time net of recorded pauses: of the finished run, else of the epochs
        logged so far (``None`` when nothing ran)."""
        logged = self.summary or (self.history[-1] if self.history else {})
        wall = logged.get("wall_seconds")
        return None if wall is None else wall - self.paused_seconds

    def show(self, path: Optional[Path]) -> str:
        """``path`` as the spec wrote it (relative to the root), for the document."""
        if path is None:
            return "-"
        try:
            return str(Path(path).relative_to(self.root))
        except ValueError:
            return str(path)


def load_spec(path: str | Path) -> dict:
    spec = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(spec.get("rows"), list) or not spec["rows"]:
        raise ValueError(f"{path}: the spec needs a non-empty 'rows' list of {{name, method, run, eval, role}}")
    return spec


def parse_row(raw: dict, root: Path) -> Row:
    """A spec row as a ``Row`` (no file read yet); a key, method or role the spec does not know raises."""
    if not isinstance(raw, dict) or "name" not in raw or "method" not in raw:
        raise ValueError(f"spec row {raw!r} needs at least 'name' and 'method'")
    unknown = set(raw) - ROW_KEYS - MAKE_KEYS
    if unknown:
        raise ValueError(f"spec row {raw['name']!r}: unknown key(s) {sorted(unknown)}; valid: {', '.join(sorted(ROW_KEYS | MAKE_KEYS))}")
    _method(raw["method"], f"row {raw['name']!r}")
    role = raw.get("role", "main")
    if role not in ROLES:
        raise ValueError(f"spec row {raw['name']!r}: unknown role {role!r}; valid: {', '.join(ROLES)}")
    evals = raw.get("eval") or []
    evals = [evals] if isinstance(evals, str) else list(evals)
    run = root / raw["run"] if raw.get("run") else None
    return Row(str(raw["name"]), raw["method"], role, run, [root / e for e in evals], root=root,
               fit=str(raw.get("fit") or ""))


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


def validation_of(row: Row) -> Optional[dict]:
    """The logged epoch the run selected (its best epoch), else the last one logged. Where the
    weight average won that epoch (``selected_weights: ema``), its ``ema_val_*`` accuracies
    are the epoch's ``val_*``: they belong to the weights the run exports."""
    best = (row.summary or {}).get("best_epoch")
    chosen = [h for h in row.history if h.get("epoch") == best] if best else []
    epoch = chosen[-1] if chosen else (row.history[-1] if row.history else (row.summary or {}).get("final"))
    if epoch and epoch.get("selected_weights") == "ema":
        epoch = {**epoch, **{k[len("ema_"):]: v for k, v in epoch.items() if k.startswith("ema_val_")}}
    return epoch

"""The robustness study: a spec says which runs to train, compare and ship; this package makes
and reports them.

    spec.py      the spec (docs/study.yaml, docs/screen.yaml) and what each row's files say:
                 Row, load_spec, load_row, validation_of, Targets; both halves below read it
    run.py       ``clead-train study``: trains, selects, exports and evaluates every row
                 (a graph of fit -> select -> export -> views -> eval jobs, resumable)
    report.py    ``clead-train report`` (and ``python -m training.study``): writes
                 docs/robustness.md from the finished runs and reports; nothing is measured
    measures.py  accuracies out of the reports, with where each came from (Measure, attack_of, ...)
    checks.py    sanity checks of the evaluations (Carlini et al. 2019)
    verdict.py   the summary: does the candidate beat the baselines by the spec's targets

Old import paths keep working for a while, with a ``DeprecationWarning`` that names the new
place: ``training.campaign`` (now ``run.py``) re-exports its names, and the names of the former
single module ``training/study.py`` (``from training.study import build_study, load_spec, ...``)
resolve lazily, below, to the module that now holds them. They are not this package's API:
import from the modules above. One old name cannot come back: ``training.study.run`` is now
the module ``run.py``; the report's entry point is ``training.study.report.run``.

The package itself imports nothing, so ``import training.study`` stays cheap.
"""

from __future__ import annotations

import importlib
import warnings

# The public names of the former training/study.py, by the module that holds each now.
_MOVED = {name: module for module, names in (
    ("spec", "ROLES ROW_KEYS MAKE_KEYS Targets Row load_spec load_row validation_of"),
    ("measures", "NOT_RUN APGD_PAIR COLUMNS Measure clean_of attack_of apgd_pair_of stand_in"),
    ("checks", "TOL Finding cross_attack_checks report_checks"),
    ("verdict", "difference summary"),
    ("report", "main_table ablation_table plot_curves build_study add_arguments"),
) for name in names.split()}


def __getattr__(name: str):
    if name == "main":
        raise AttributeError("training.study.main is gone: the report is `clead-train report` "
                             "(from Python: training.cli.main(['report', ...]))")
    module = _MOVED.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(f"training.study.{name} moved to training.study.{module}.{name}; import it from there",
                  DeprecationWarning, stacklevel=2)
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)

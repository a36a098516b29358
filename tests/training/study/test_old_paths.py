"""The import paths of before the study became a package still work, and warn where to go instead."""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings

import pytest

from training.study import report, run, spec


@pytest.mark.parametrize("name, module", [
    ("build_study", report), ("add_arguments", report), ("load_spec", spec), ("Row", spec),
    ("load_row", spec), ("validation_of", spec), ("Targets", spec),
])
def test_old_report_names_resolve_and_warn(name, module):
    import training.study

    with pytest.warns(DeprecationWarning, match=rf"training\.study\.{name} moved to {module.__name__}\.{name}"):
        assert getattr(training.study, name) is getattr(module, name)
    with pytest.warns(DeprecationWarning):
        exec(f"from training.study import {name}", {})


def test_the_old_report_main_says_where_it_went():
    import training.study

    with pytest.raises(AttributeError, match="clead-train report"):
        training.study.main  # noqa: B018


def test_run_is_the_runner_module_and_unknown_names_raise():
    import training.study

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from training.study import run as runner  # a submodule, not a moved name: no warning
    assert runner is run and callable(run.build_plan)
    with pytest.raises(AttributeError, match="no_such_name"):
        training.study.no_such_name  # noqa: B018


def test_old_campaign_module_reexports_the_runner_and_warns():
    sys.modules.pop("training.campaign", None)
    with pytest.warns(DeprecationWarning, match=r"training\.campaign moved to training\.study\.run"):
        campaign = importlib.import_module("training.campaign")
    for name in campaign.__all__:
        assert getattr(campaign, name) is getattr(run, name)


def test_python_m_training_study_still_writes_the_report():
    out = subprocess.run([sys.executable, "-m", "training.study", "--help"], capture_output=True, text=True, check=True)
    assert "--spec" in out.stdout and "--strict" in out.stdout

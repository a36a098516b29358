"""Robustness evaluation, in four modules:

- ``specs``: which attacks to run (``"fgsm,pgd20,cw30,autoattack"``), with the literature's
  evaluation defaults, built from the one attack registry (``training.attacks``);
- ``runner``: ``evaluate`` (clean and robust accuracy on a fixed class-balanced subset, resumable),
  ``robustness_curve``, ``optimize_for_attack``;
- ``sanity``: the checks of Carlini et al. 2019 that catch gradient masking;
- ``report``: ``report.md``, the robustness curve, the artifact's metrics.

``clead-train eval`` (``training.cli.evaluate``) is its command line.
"""

from training.evaluation.report import describe_model, plot_curve, record_metrics, render_markdown
from training.evaluation.runner import (
    balanced_subset, check_threat_model, correct_mask, evaluate, optimize_for_attack, prepare_model, robust_mask,
    robustness_curve, worst_case,
)
from training.evaluation.sanity import Check, format_checks, run_sanity_checks
from training.evaluation.specs import (
    DEFAULT_ATTACKS, DEFAULT_L2_EPS, EVAL_DEFAULTS, AttackSpec, as_specs, build_attack, fmt_eps, implementation_of,
    parse_attacks, parse_n, valid_attack_names,
)

__all__ = [
    "AttackSpec", "Check", "DEFAULT_ATTACKS", "DEFAULT_L2_EPS", "EVAL_DEFAULTS", "as_specs", "balanced_subset",
    "build_attack", "check_threat_model", "correct_mask", "describe_model", "evaluate", "fmt_eps", "format_checks",
    "implementation_of", "optimize_for_attack", "parse_attacks", "parse_n", "plot_curve", "prepare_model",
    "record_metrics", "render_markdown", "robust_mask", "robustness_curve", "run_sanity_checks", "valid_attack_names",
    "worst_case",
]

"""``clead-train``: train (``fit``), export and evaluate robust classifiers, make fixed ``views``, ``report`` the study.

The command lines of the library: each subcommand is a module here with ``add_arguments``
and ``run`` (``fit``, ``evaluate``, ``export``, ``views``, ``suspicion``, ``pause``), or the study's
(``training.study``). They parse arguments, build the library's config dataclasses and call
the library, which never sees argparse.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence


def build_parser() -> argparse.ArgumentParser:
    from training.cli import evaluate, export, fit, pause, suspicion, views
    from training.study import report, run

    parser = argparse.ArgumentParser(prog="clead-train", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module, help_text in (
        ("fit", fit, "train a classifier with C-LEAD or a baseline method"),
        ("export", export, "export a run's best checkpoint as a self-contained artifact, or ship an artifact under a new name"),
        ("eval", evaluate, "evaluate robustness under attacks and write a report"),
        ("views", views, "precompute adversarial views of the train split (for --method clead-fixed)"),
        ("suspicion", suspicion, "add the suspicion score to artifacts (augment) and measure it (eval)"),
        ("study", run, "train, select, export and evaluate every row of the study spec (docs/study.yaml)"),
        ("report", report, "write the robustness study (docs/robustness.md) from finished runs and reports"),
        ("pause", pause, "stop a running fit or eval while a command runs, keeping the pause out of its wall time"),
    ):
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(run=module.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # the exact command, recorded with runs and reports
    try:
        return int(args.run(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        # Contract breaches carry a message a user can act on; show it without a traceback.
        print(f"clead-train {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

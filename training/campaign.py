"""Deprecated: ``clead-train study``'s runner is ``training.study.run`` now; this module only
re-exports its names (with a ``DeprecationWarning``) for code that still imports it from here."""

import warnings

warnings.warn("training.campaign moved to training.study.run; import it from there", DeprecationWarning,
              stacklevel=2)

from training.study.run import (  # noqa: E402  (after the warning, so that it names the importer)
    SHIP_DIR,
    SMOKE_FIT,
    Job,
    Plan,
    add_arguments,
    artifact_of,
    best_of,
    build_plan,
    execute,
    run,
    views_file,
)

__all__ = ["SHIP_DIR", "SMOKE_FIT", "Job", "Plan", "add_arguments", "artifact_of", "best_of", "build_plan",
           "execute", "run", "views_file"]

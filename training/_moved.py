"""Old import paths of modules that moved: each old module is a two-line alias made here."""

from __future__ import annotations

import importlib
import warnings
from typing import Any, Callable


def forward(old: str, new: str, names: tuple[str, ...] = ()) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``old`` that serves the attributes of ``new``.

    With ``names``, only those are forwarded (the old module still has code of its own) and
    each access warns; without, importing ``old`` warns once and every attribute forwards."""
    message = f"{old} has moved to {new}; import from there (the old path will be removed)"
    if not names:
        warnings.warn(message, DeprecationWarning, stacklevel=3)

    def __getattr__(name: str) -> Any:
        if names and name not in names:
            raise AttributeError(f"module {old!r} has no attribute {name!r}")
        if names:
            warnings.warn(f"{old}.{name} has moved to {new}.{name}; import it from there", DeprecationWarning,
                          stacklevel=2)
        return getattr(importlib.import_module(new), name)

    return __getattr__

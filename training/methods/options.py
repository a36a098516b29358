"""Per-method options: each method declares a small dataclass of its own options.

A field made with :func:`training.flags.option` carries its command-line flag and help text, so the
dataclass is the one place that holds an option's name, type, default and allowed values:
``clead-train fit`` builds its flags from it (``training.cli.fit``) and ``validate`` checks
the values with messages that name the flag. The run config (``training.config``) keeps a
method's options as a plain mapping and knows no method by name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from training.flags import fail, option

__all__ = ["Options", "fail", "option"]  # the methods make their fields with option()


@dataclass
class Options:
    """Base of every method's options: a method without options of its own uses it as is."""

    def validate(self) -> None:
        """Check every field against its ``choices``/``check``, then the method's own rules
        between fields (``check_together``); raise ``ValueError`` naming the flag."""
        for f in dataclasses.fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if meta.get("choices") and value not in meta["choices"]:
                fail(meta["flag"], f"must be {' or '.join(meta['choices'])}, got {value!r}")
            if meta.get("check") is not None and not meta["check"](value):
                fail(meta["flag"], f"must be {meta['must']}, got {value}")
        self.check_together()

    def check_together(self) -> None:
        """Rules that involve more than one option (none by default)."""

    @classmethod
    def flags(cls) -> list[dataclasses.Field]:
        return [f for f in dataclasses.fields(cls) if "flag" in f.metadata]

    @classmethod
    def flag_of(cls, name: str) -> str:
        return next(f.metadata["flag"] for f in dataclasses.fields(cls) if f.name == name)

    @classmethod
    def from_mapping(cls, values: dict[str, Any], method: str) -> "Options":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            valid = ", ".join(sorted(names)) or "none"
            raise ValueError(f"unknown option(s) {unknown} of method {method!r}; its options: {valid}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

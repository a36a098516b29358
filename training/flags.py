"""Dataclass fields that carry their command-line flag: the one place for an option's name,
type, default, help and allowed values.

``option(default, "--lr", "peak learning rate")`` makes such a field; ``clead-train fit``
(``training.cli.fit``) builds its flags by walking the run config and the methods' options,
and shows each default as the dataclass has it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Optional


def option(default: Any, flag: str, help: str, choices: Optional[Iterable[str]] = None,
           check: Optional[Callable[[Any], bool]] = None, must: str = "",
           parse: Optional[Callable[[str], Any]] = None) -> Any:
    """A dataclass field with its ``flag`` (``--tau``), ``help``, the allowed ``choices`` or a
    ``check`` predicate with ``must`` saying what it requires (``"> 0"``), and ``parse`` for
    values that are not plain ``int``/``float``/``str`` (e.g. ``8/255``)."""
    return dataclasses.field(default=default, metadata={
        "flag": flag, "help": help, "choices": tuple(choices or ()), "check": check, "must": must, "parse": parse})


def fail(flag: str, message: str) -> None:
    """Raise the ``ValueError`` that every invalid option raises: it names the flag."""
    raise ValueError(f"invalid option {flag}: {message}")


def value_type(f: dataclasses.Field) -> Callable[[str], Any]:
    """How to read a flag's value: the field's ``parse``, else its annotated type."""
    if f.metadata.get("parse") is not None:
        return f.metadata["parse"]
    name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    for text, typ in (("float", float), ("int", int), ("str", str)):
        if text in name:
            return typ
    raise TypeError(f"option {f.name}: no reader for type {name!r}; give it parse=")


def is_bool(f: dataclasses.Field) -> bool:
    name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    return "bool" in name

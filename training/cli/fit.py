"""``clead-train fit``: the command line of the training loop (``training.train.fit``).

Flags override the YAML file given by ``--config``. Every flag is declared by its field, in
the run config (``training.config``, ``training.data.DataConfig``) or in a method's options
(``training.methods``, e.g. ``--tau`` of ``CLEADOptions``), with ``training.flags.option``: this
module only walks those dataclasses, so name, type, help and default live in one place.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

import yaml

from training import config as C
from training.flags import is_bool, value_type
from training.methods import method_names, option_fields

METHOD_OPTIONS = "method."  # dest prefix of the methods' own flags (beside name, as in a YAML section)


def config_flags(cls: type = C.TrainConfig, prefix: str = "") -> list[tuple[str, dataclasses.Field]]:
    """``(config path, field)`` of every run-config field that has a flag, in dataclass order."""
    found = []
    for f in dataclasses.fields(cls):
        section = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if section is not None and dataclasses.is_dataclass(section):
            found += config_flags(section, f"{prefix}{f.name}.")
        elif "flag" in f.metadata:
            found.append((prefix + f.name, f))
    return found


def default_of(path: str) -> Any:
    """The dataclass default of a config path such as ``optim.lr``."""
    node: Any = C.TrainConfig()
    for part in path.split("."):
        node = getattr(node, part)
    return node


def _add(parser: argparse._ActionsContainer, dest: str, f: dataclasses.Field, default: Any, extra: str = "") -> None:
    kw: dict[str, Any] = dict(dest=dest, default=argparse.SUPPRESS, help=f"{f.metadata['help']}{extra} "
                                                                         f"(default {default})")
    if is_bool(f):
        kw["action"] = argparse.BooleanOptionalAction
    else:
        kw.update(type=value_type(f), metavar=f.metadata["flag"].lstrip("-").upper().replace("-", "_"))
    parser.add_argument(f.metadata["flag"], **kw)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file with config sections (method, model, data, attack, optim, ...)")
    for path, f in config_flags():
        extra = f": {' | '.join(method_names())}" if path == "method.name" else ""
        _add(parser, path, f, default_of(path), extra)
    group = parser.add_argument_group("options of a method (see training.methods)")
    for f in option_fields():
        _add(group, METHOD_OPTIONS + f.name, f, f.default)


def config_from_args(args: argparse.Namespace) -> C.TrainConfig:
    raw: dict[str, Any] = {}
    if getattr(args, "config", None):
        path = Path(args.config)
        if not path.is_file():
            raise FileNotFoundError(f"--config: no such file {path}")
        raw = yaml.safe_load(path.read_text()) or {}
    for key, value in vars(args).items():
        if key in ("config", "command", "run", "argv"):
            continue
        node = raw
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return C.from_dict(raw)


def run(args: argparse.Namespace) -> int:
    from training.methods import resolve
    from training.train import fit

    cfg = resolve(config_from_args(args))  # before any data is loaded
    fit(cfg, command=" ".join(["clead-train", *getattr(args, "argv", sys.argv[1:])]))
    return 0


__all__ = ["add_arguments", "config_flags", "config_from_args", "default_of", "run"]

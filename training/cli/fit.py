"""``clead-train fit``: the command line of the training loop (``training.train.fit``).

Flags override the YAML file given by ``--config``. Each flag names a field of the run config
(``training.config``) or of a method's options (``training.methods``, e.g. ``--tau`` of
``CLEADOptions``); the defaults shown in ``--help`` are read from those dataclasses, the one
place that holds them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from training import config as C
from training.methods import method_names, option_fields

# flag -> (config path, type, help). The method's own options come from the methods.
FLAGS: list[tuple[str, str, Any, str]] = [
    ("--method", "method.name", str, " | ".join(method_names())),
    ("--model", "model.name", str, "registered model, e.g. preact_resnet18"),
    ("--width", "model.width", float, "channel multiplier (preact_resnet18: 1.0 full, 0.5 half)"),
    ("--data", "data.data", str, "'cifar10' (download) or a path (see training.data)"),
    ("--cache-dir", "data.cache_dir", str, "decoded-data cache (default $CLEAD_CACHE or ~/.cache/clead)"),
    ("--limit", "data.limit", int, "train on the first N training images (smoke runs)"),
    ("--val-size", "data.val_size", int, "training images held out for validation"),
    ("--batch-size", "data.batch_size", int, "batch size per process"),
    ("--epochs", "epochs", int, "number of epochs"),
    ("--out", "out", str, "run directory"),
    ("--seed", "seed", int, "random seed"),
    ("--device", "device", str, "auto | cpu | cuda | cuda:N"),
    ("--amp", "amp", str, "auto | bf16 | fp16 | off"),
    ("--eps", "attack.eps", C.parse_fraction, "attack radius, e.g. 8/255"),
    ("--attack-steps", "attack.steps", int, "inner attack steps (1 = FGSM-RS)"),
    ("--attack-alpha", "attack.alpha", C.parse_fraction, "inner attack step size, e.g. 2/255"),
    ("--attack-norm", "attack.norm", str, "linf | l2"),
    ("--attack-mode", "attack.mode", str, "model mode while attacking: train | eval"),
    ("--attack-kind", "attack.kind", str, "inner attack: auto (FGSM-RS at 1 step, else PGD) | n-fgsm"),
    ("--attack-noise", "attack.noise", float, "n-fgsm noise radius in units of eps"),
    ("--fixed-views", "data.views", str, "clead-fixed: file of precomputed adversarial views (clead-train views)"),
    ("--optimizer", "optim.optimizer", str, "sgd | adamw"),
    ("--lr", "optim.lr", float, "peak learning rate"),
    ("--momentum", "optim.momentum", float, "SGD momentum"),
    ("--weight-decay", "optim.weight_decay", float, "weight decay"),
    ("--schedule", "optim.schedule", str, "onecycle | cosine"),
    ("--warmup", "optim.warmup", float, "fraction of steps rising to the peak lr"),
    ("--label-smoothing", "optim.label_smoothing", float, "label smoothing"),
    ("--ema-decay", "optim.ema_decay", float, "weight EMA decay per step, e.g. 0.999 (None and 0: off)"),
    ("--grad-clip", "optim.grad_clip", float, "max gradient norm"),
    ("--val-n", "val_n", int, "validation images attacked per epoch"),
    ("--val-attack-steps", "val_attack_steps", int, "PGD steps of the validation attack"),
    ("--patience", "patience", int, "early stop after N epochs without better robust val acc"),
]
BOOL_FLAGS = [
    ("--augment", "data.augment", "random crop + flip"),
    ("--compile", "compile", "torch.compile the model"),
    ("--channels-last", "channels_last", "channels_last memory format (None: on for CUDA)"),
    ("--resume", "resume", "continue the run in --out from its last.pt"),
]
METHOD_OPTIONS = "method."  # dest prefix of the methods' own flags (beside name, as in a YAML section)


def default_of(path: str) -> Any:
    """The dataclass default of a config path such as ``optim.lr``."""
    node: Any = C.TrainConfig()
    for part in path.split("."):
        node = getattr(node, part)
    return node


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file with config sections (method, model, data, attack, optim, ...)")
    for flag, path, typ, help_text in FLAGS:
        parser.add_argument(flag, dest=path, type=typ, default=argparse.SUPPRESS,
                            help=f"{help_text} (default {default_of(path)})")
    for flag, path, help_text in BOOL_FLAGS:
        parser.add_argument(flag, dest=path, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                            help=f"{help_text} (default {default_of(path)})")
    group = parser.add_argument_group("options of a method (see training.methods)")
    for f in option_fields():
        kw: dict[str, Any] = dict(dest=METHOD_OPTIONS + f.name, default=argparse.SUPPRESS,
                                  help=f"{f.metadata['help']} (default {f.default})")
        if f.type in (bool, "bool"):
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = {"float": float, "int": int, "str": str}.get(f.type, f.type) if isinstance(f.type, str) else f.type
        group.add_argument(f.metadata["flag"], **kw)


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


__all__ = ["BOOL_FLAGS", "FLAGS", "add_arguments", "config_from_args", "default_of", "run"]

"""Training-method registry: ``create_method(model, cfg) -> Method`` (a task).

=========  ===========================================================================
standard   cross-entropy on clean images (undefended baseline)
pgd-at     Madry et al. 2018; ``attack.steps = 1`` gives FGSM-RS (Wong et al. 2020)
trades     Zhang et al. 2019: CE(clean) + beta * KL(clean || adv)
clead      C-LEAD (arXiv 2510.27249): CE + lambda * contrastive(clean, adv), online min-max
clead-fixed  C-LEAD's objective on fixed views precomputed from another model (a control)
=========  ===========================================================================

Each method declares its options (``Method.Options``, a dataclass whose fields carry their
flags); ``resolve`` checks a run config against its method and fills in the method's
defaults, ``create_method`` builds the task. A new method is a class registered here.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

from torch import nn

from training import config as C
from training.attacks import create_attack
from training.attacks.gradient import NFGSM
from training.config import AttackConfig, TrainConfig
from training.methods.base import Method
from training.methods.baselines import PGDAT, TRADES, Standard, TRADESOptions
from training.methods.clead import CLEAD, CLEADFixed, CLEADOptions, ProjectionHead
from training.methods.options import Options, fail
from training.registry import Registry

METHODS: Registry[type[Method]] = Registry("method")
for _cls in (Standard, PGDAT, TRADES, CLEAD, CLEADFixed):
    METHODS.register(_cls.name)(_cls)


def method_names() -> list[str]:
    return METHODS.names()


def option_fields() -> list[dataclasses.Field]:
    """Every registered method's option fields, each flag once (for ``clead-train fit``)."""
    seen: dict[str, dataclasses.Field] = {}
    for name in method_names():
        for f in METHODS.get(name).Options.flags():
            other = seen.setdefault(f.metadata["flag"], f)
            if other.name != f.name:
                raise ValueError(f"flag {f.metadata['flag']} names two options: {other.name} and {f.name}")
    return list(seen.values())


def method_options(name: str, values: dict[str, Any]) -> Options:
    """The validated options of method ``name`` from ``values`` (defaults for the rest).

    A config written before options were per-method holds every method's options with their
    prefixes (``clead_tau``, ``trades_beta``): the method's own are read without the prefix,
    the other methods' are dropped. An option of another method given without prefix (e.g.
    ``--tau`` to pgd-at) is dropped with a warning, as it would not change the run."""
    cls = METHODS.get(name)
    own = {f.name for f in dataclasses.fields(cls.Options)}
    kept: dict[str, Any] = {}
    for key, value in values.items():
        if cls.legacy_prefix and key.startswith(cls.legacy_prefix) and key[len(cls.legacy_prefix):] in own:
            key = key[len(cls.legacy_prefix):]
        if key in own:
            kept[key] = value
        elif _is_legacy_key(key):
            continue
        elif key in {f.name for f in option_fields()}:
            warnings.warn(f"method {name!r} has no option {key!r} (another method's); it is ignored", stacklevel=3)
        else:
            kept[key] = value  # from_mapping names it as unknown
    opts = cls.Options.from_mapping(kept, name)
    opts.validate()
    return opts


def _is_legacy_key(key: str) -> bool:
    return any(cls.legacy_prefix and key.startswith(cls.legacy_prefix) for cls in map(METHODS.get, method_names()))


def resolve(cfg: TrainConfig) -> TrainConfig:
    """Validate ``cfg`` (``config.validate``, then what its method requires) and fill in the
    method's option defaults, so the saved config says every value the run used. Raises
    ``ValueError`` naming the first invalid option; runs before any data is loaded."""
    C.validate(cfg)
    if cfg.method.name not in METHODS:
        fail("--method", f"unknown method {cfg.method.name!r}; valid: {', '.join(method_names())}")
    cls = METHODS.get(cfg.method.name)
    cfg.method.options = method_options(cfg.method.name, cfg.method.options).to_dict()
    a = cfg.attack
    if cls.online_attack:
        if a.steps < 1:
            fail("--attack-steps", f"must be >= 1 for the adversarial method {cls.name!r}, got {a.steps}")
        if a.eps <= 0:
            fail("--eps", f"must be > 0 for the adversarial method {cls.name!r}")
    if cls.needs_views:
        if not cfg.data.views:
            fail("--fixed-views", f"the method {cls.name} trains on precomputed adversarial views: pass --fixed-views "
                                  "FILE (made by `clead-train views`)")
        if not Path(cfg.data.views).is_file():
            fail("--fixed-views", f"no such file {cfg.data.views}")
    elif cfg.data.views:
        fail("--fixed-views", f"only a method that trains on fixed views (clead-fixed) reads them, not {cls.name!r}")
    return cfg


def inner_attack(a: AttackConfig):
    """The training-time attack of ``a``: N-FGSM if asked, else FGSM with random start for 1
    step, else PGD."""
    if a.kind == "n-fgsm":
        return NFGSM(eps=a.eps, alpha=a.step_size(), noise=a.noise)
    kwargs = dict(eps=a.eps, alpha=a.step_size(), norm=a.norm, random_start=True)
    return create_attack("fgsm", **kwargs) if a.steps == 1 else create_attack("pgd", steps=a.steps, **kwargs)


def create_method(model: nn.Module, cfg: TrainConfig) -> Method:
    cls = METHODS.get(cfg.method.name)
    attack = inner_attack(cfg.attack) if cls.online_attack else None
    opts = method_options(cfg.method.name, cfg.method.options)
    return cls(model, opts, attack, cfg.attack, label_smoothing=cfg.optim.label_smoothing)


__all__ = ["Method", "METHODS", "Options", "CLEADOptions", "TRADESOptions", "create_method", "inner_attack",
           "method_names", "method_options", "option_fields", "resolve", "ProjectionHead", "CLEAD", "CLEADFixed",
           "PGDAT", "TRADES", "Standard"]

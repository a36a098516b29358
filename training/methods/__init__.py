"""Training-method registry: ``create_method(model, cfg) -> Method`` (a task).

=========  ===========================================================================
standard   cross-entropy on clean images (undefended baseline)
pgd-at     Madry et al. 2018; ``attack.steps = 1`` gives FGSM-RS (Wong et al. 2020)
trades     Zhang et al. 2019: CE(clean) + beta * KL(clean || adv)
clead      C-LEAD (arXiv 2510.27249): CE + lambda * contrastive(clean, adv), online min-max
clead-fixed  C-LEAD's objective on fixed views precomputed from another model (a control)
=========  ===========================================================================
"""

from __future__ import annotations

from torch import nn

from training.attacks import create_attack
from training.attacks.gradient import NFGSM
from training.config import AttackConfig, TrainConfig
from training.methods.base import Method
from training.methods.baselines import PGDAT, TRADES, Standard
from training.methods.clead import CLEAD, CLEADFixed, ProjectionHead
from training.registry import Registry

METHODS: Registry[type[Method]] = Registry("method")
for _cls in (Standard, PGDAT, TRADES, CLEAD, CLEADFixed):
    METHODS.register(_cls.name)(_cls)


def method_names() -> list[str]:
    return METHODS.names()


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
    return cls(model, cfg.method, attack, cfg.attack, label_smoothing=cfg.optim.label_smoothing)


__all__ = ["Method", "METHODS", "create_method", "inner_attack", "method_names", "ProjectionHead", "CLEAD", "CLEADFixed", "PGDAT", "TRADES", "Standard"]

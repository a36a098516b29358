"""Attack registry: ``create_attack(name, **kw)`` -> callable ``attack(model, x, y) -> x_adv``.

Training, evaluation, the CLI and the demo all build attacks from this one registry.

=========  ==================================================================
name       attack
=========  ==================================================================
fgsm       one signed-gradient step of size eps (``random_start`` -> FGSM-RS)
pgd        PGD on cross-entropy, L-inf or L2 (``norm``), random start, restarts
pgd-l2     PGD with ``norm="l2"`` as default
cw         PGD on the CW margin loss
apgd-ce    Auto-PGD on cross-entropy
apgd-dlr   Auto-PGD on the DLR loss
apgd-t     targeted Auto-PGD on DLR over the top-9 classes
=========  ==================================================================
"""

from __future__ import annotations

from training.attacks.apgd import APGD, APGDTargeted, dlr_loss, targeted_dlr_loss
from training.attacks.base import Attack, Objective, ce_objective, margin, margin_objective
from training.attacks.gradient import FGSM, PGD, CWMargin
from training.registry import Registry

ATTACKS: Registry[Attack] = Registry("attack")
ATTACKS.register("fgsm")(FGSM)
ATTACKS.register("pgd")(PGD)
ATTACKS.register("pgd-l2")(lambda **kw: PGD(**{"norm": "l2", **kw}))
ATTACKS.register("cw")(CWMargin)
ATTACKS.register("apgd-ce")(APGD)
ATTACKS.register("apgd-dlr")(lambda **kw: APGD(**{"loss": "dlr", **kw}))
ATTACKS.register("apgd-t")(APGDTargeted)


def create_attack(name: str, **kw) -> Attack:
    """Build a registered attack, e.g. ``create_attack("pgd", eps=8/255, steps=20)``."""
    attack = ATTACKS.get(name)(**kw)
    attack.name = name.strip().lower()
    return attack


def attack_names() -> list[str]:
    return ATTACKS.names()


__all__ = [
    "Attack", "Objective", "FGSM", "PGD", "CWMargin", "APGD", "APGDTargeted", "ATTACKS",
    "create_attack", "attack_names", "ce_objective", "margin", "margin_objective",
    "dlr_loss", "targeted_dlr_loss",
]

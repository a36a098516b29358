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
square     Square Attack, score-based black box (torchattacks)
autoattack standard AutoAttack: APGD-CE, APGD-T, FAB-T, Square (torchattacks)
=========  ==================================================================

The last two run torchattacks through adapters (``training.attacks.third_party``), so that a
robustness claim is never graded by our own attack code alone; they are ``Attack``s like the
others (``attack.third_party`` and ``attack.implementation`` say whose code runs).
"""

from __future__ import annotations

from training.attacks.apgd import APGD, APGDTargeted, dlr_loss, targeted_dlr_loss
from training.attacks.base import Attack, Objective, ce_objective, margin, margin_objective
from training.attacks.gradient import FGSM, PGD, CWMargin
from training.attacks.third_party import AutoAttack, Square, TorchattacksAttack, torchattacks_version
from training.registry import Registry

ATTACKS: Registry[Attack] = Registry("attack")
ATTACKS.register("fgsm")(FGSM)
ATTACKS.register("pgd")(PGD)
ATTACKS.register("pgd-l2")(lambda **kw: PGD(**{"norm": "l2", **kw}))
ATTACKS.register("cw")(CWMargin)
ATTACKS.register("apgd-ce")(APGD)
ATTACKS.register("apgd-dlr")(lambda **kw: APGD(**{"loss": "dlr", **kw}))
ATTACKS.register("apgd-t")(APGDTargeted)
ATTACKS.register("square")(Square)
ATTACKS.register("autoattack")(AutoAttack)


def create_attack(name: str, **kw) -> Attack:
    """Build a registered attack, e.g. ``create_attack("pgd", eps=8/255, steps=20)``."""
    attack = ATTACKS.get(name)(**kw)
    attack.name = name.strip().lower()
    return attack


def attack_names() -> list[str]:
    return ATTACKS.names()


def is_third_party(name: str) -> bool:
    """Whether the registered attack ``name`` runs another library's code."""
    return bool(getattr(ATTACKS.get(name), "third_party", False))


def attack_context(name: str) -> tuple[str, ...]:
    """The arguments an evaluation passes to attack ``name`` besides its settings."""
    return tuple(getattr(ATTACKS.get(name), "context", ()))


__all__ = [
    "Attack", "Objective", "FGSM", "PGD", "CWMargin", "APGD", "APGDTargeted", "AutoAttack", "Square",
    "TorchattacksAttack", "ATTACKS", "create_attack", "attack_names", "attack_context", "is_third_party",
    "torchattacks_version", "ce_objective", "margin", "margin_objective", "dlr_loss", "targeted_dlr_loss",
]

"""Which attacks an evaluation runs: ``name[:key=value[:key=value...]]`` specs and their
evaluation defaults.

Attacks are named as in ``fgsm,pgd:steps=50:restarts=5,cw30,apgd-t,autoattack``; every name is
an attack of the one registry (``training.attacks``), where ``autoattack`` and ``square`` run
torchattacks, a third-party implementation, so our claims are never graded by our own code
alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Optional, Sequence

from training.attacks import Attack, attack_context, attack_names, create_attack, is_third_party
from training.config import parse_eps

DEFAULT_ATTACKS = "fgsm,pgd,cw,apgd-ce,apgd-t,autoattack"
DEFAULT_L2_EPS = 0.5  # the standard CIFAR-10 L2 budget (RobustBench), for pgd-l2

# Evaluation defaults from the robustness literature; settings given on the command line win.
# PGD-20 and CW-30 with step eps/4 (2/255 at 8/255) are the TRADES / MART table settings;
# APGD and AutoAttack use the 100 iterations of Croce and Hein 2020.
EVAL_DEFAULTS: dict[str, dict[str, Any]] = {
    "pgd": {"steps": 20},
    "pgd-l2": {"steps": 20, "eps": DEFAULT_L2_EPS},
    "cw": {"steps": 30},
    "apgd-ce": {"steps": 100},
    "apgd-dlr": {"steps": 100},
    "apgd-t": {"steps": 100},
    "square": {"queries": 5000, "p_init": 0.8, "restarts": 1},
    "autoattack": {"steps": 100, "queries": 5000},
}
_STEP_FRACTION = {"pgd": 0.25, "cw": 0.25}  # alpha = eps * this unless given
_SHORTHAND = re.compile(r"^(pgd|cw)(\d+)$")  # "pgd20" = "pgd:steps=20", as papers write it


# ---------------------------------------------------------------------------------------
# Parsing: attack specs, subset sizes
# ---------------------------------------------------------------------------------------
def _parse_value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for parse in (int, lambda t: float(Fraction(t))):
        try:
            return parse(text)
        except (ValueError, ZeroDivisionError):
            pass
    return text


@dataclass
class AttackSpec:
    """One attack to run: registry (or third-party) name, explicit settings, label as written."""

    name: str
    settings: dict[str, Any] = field(default_factory=dict)
    label: str = ""

    def __post_init__(self) -> None:
        self.label = self.label or self.name

    @property
    def third_party(self) -> bool:
        return is_third_party(self.name)


def valid_attack_names() -> list[str]:
    return attack_names()


def parse_attacks(text: str | Sequence[str]) -> list[AttackSpec]:
    """``"fgsm,pgd:steps=50:restarts=5,cw30,autoattack"`` -> list of specs."""
    items = text.split(",") if isinstance(text, str) else list(text)
    specs = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        name, *pairs = item.split(":")
        name = name.strip().lower()
        settings: dict[str, Any] = {}
        if m := _SHORTHAND.match(name):
            name, settings["steps"] = m.group(1), int(m.group(2))
        if name not in valid_attack_names():
            raise ValueError(f"unknown attack {name!r} in {item!r}; valid: {', '.join(valid_attack_names())}")
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"attack setting {pair!r} in {item!r} is not key=value (e.g. pgd:steps=50:restarts=5)")
            settings[key.strip()] = _parse_value(value.strip())
        specs.append(AttackSpec(name, settings, item))
    if not specs:
        raise ValueError(f"no attacks given; valid: {', '.join(valid_attack_names())}")
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"attack list {labels} names the same attack twice")
    return specs


def as_specs(attacks: Sequence[AttackSpec | str] | str) -> list[AttackSpec]:
    if isinstance(attacks, str):
        return parse_attacks(attacks)
    return [a if isinstance(a, AttackSpec) else parse_attacks([a])[0] for a in attacks]


def parse_n(text: str | int | None) -> Optional[int]:
    """``"all"`` / None -> None (every image); otherwise a positive count."""
    if text is None or str(text).strip().lower() == "all":
        return None
    try:
        n = int(text)
    except ValueError:
        raise ValueError(f"--n must be a positive integer or 'all', got {text!r}") from None
    if n < 1:
        raise ValueError(f"--n must be a positive integer or 'all', got {n}")
    return n


# ---------------------------------------------------------------------------------------
# Building attacks: evaluation defaults on top of the registry's
# ---------------------------------------------------------------------------------------
def build_attack(spec: AttackSpec, eps: float, n_classes: int = 10, seed: int = 0) -> Attack:
    """An attack object for ``spec`` with evaluation defaults; ``eps`` unless the spec sets one.
    Attacks that take them (``Attack.context``) also get the number of classes and the seed."""
    settings = {**EVAL_DEFAULTS.get(spec.name, {}), **spec.settings}
    settings.setdefault("eps", eps)
    settings["eps"] = parse_eps(settings["eps"])
    if spec.name in _STEP_FRACTION and "alpha" not in settings and settings["eps"] > 0:
        settings["alpha"] = settings["eps"] * _STEP_FRACTION[spec.name]
    context = {"n_classes": n_classes, "seed": seed}
    try:
        return create_attack(spec.name, **settings, **{k: context[k] for k in attack_context(spec.name)})
    except TypeError as exc:
        raise ValueError(f"bad settings for attack {spec.label!r}: {exc}") from exc


def implementation_of(attack: Attack) -> str:
    return attack.implementation


def fmt_eps(value: float) -> str:
    """8/255 rather than 0.0313725 where the value is a round number of 255ths."""
    k = value * 255
    return f"{round(k, 2):g}/255" if value and abs(k - round(k, 2)) < 1e-6 else f"{value:.4g}"


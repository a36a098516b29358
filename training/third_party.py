"""Deprecated alias of ``training.attacks.third_party`` (moved there); it will be removed."""

from training._moved import forward

__getattr__ = forward(__name__, "training.attacks.third_party")

"""Deprecated alias of ``training.cli.evaluate`` (moved there); it will be removed."""

from training._moved import forward

__getattr__ = forward(__name__, "training.cli.evaluate")

"""Deprecated alias of ``training.cli.export`` (moved there); it will be removed."""

from training._moved import forward

__getattr__ = forward(__name__, "training.cli.export")

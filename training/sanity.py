"""Deprecated alias of ``training.evaluation.sanity`` (moved there); it will be removed."""

from training._moved import forward

__getattr__ = forward(__name__, "training.evaluation.sanity")

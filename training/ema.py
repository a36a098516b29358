"""Exponential moving averages of weights: the loop's weight averaging and C-LEAD's momentum
encoder share this one class.

Weight averaging smooths the last stretch of adversarial training and is one of the cheap
fast-AT improvements that hold up under AutoAttack (Izmailov et al. 2018 for averaging in
general; Gowal et al. 2020, "Uncovering the Limits of Adversarial Training ...", for the EMA
of adversarially trained weights). The averaging is torch's own ``AveragedModel``; we only add
the decay warm-up: early weights are far from the final ones, so the effective decay ramps as
``min(decay, (1 + n) / (10 + n))`` after ``n`` updates (timm's ``ModelEmaV3`` does the same).
Buffers are averaged too (``use_buffers=True``), so BatchNorm statistics stay consistent with
the averaged weights without a recomputation pass.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


def _ema_fn(decay: float):
    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        n = float(n_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n))
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, 1.0 - d)
        else:  # integer buffers (BatchNorm's num_batches_tracked): follow the model
            for a, c in zip(averaged, current):
                a.copy_(c)

    return update


class WeightEMA(nn.Module):
    """An EMA copy of ``model`` (parameters and buffers), updated after each optimiser step."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__()
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.averaged = AveragedModel(model, multi_avg_fn=_ema_fn(decay), use_buffers=True)
        self.averaged.requires_grad_(False)

    @property
    def module(self) -> nn.Module:
        """The averaged copy, an instance of the original model's class."""
        return self.averaged.module

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.averaged.update_parameters(model)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def copy_of_module(self) -> nn.Module:
        return copy.deepcopy(self.module)

"""A training method is a task: ``task(x, y) -> {"loss", "logits", <parts>}``.

It runs in two phases so one loop drives every method, on one device or under DDP:

* ``perturb(x, y)`` -> extra inputs (e.g. ``{"x_adv": ...}``): the inner maximisation,
  run on the bare modules with gradients w.r.t. the input only;
* ``forward(x, y, **extra)`` -> dict: the outer objective. This is what the loop wraps in
  DistributedDataParallel, so every parameter the loss touches (classifier and any
  training-only head) is reduced across ranks.

``step(x, y)`` runs both and is the plain task interface for single-process use.

A method declares its own options as a dataclass (``Options``, see
``training.methods.options``); the loop and the run config never name a method.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from training.attacks import Attack, Objective
from training.config import AttackConfig
from training.methods.options import Options


class Method(nn.Module):
    name = "method"
    adversarial = False  # selected on robust validation accuracy
    online_attack = False  # runs an inner attack every step (gets ``self.attack``)
    needs_views = False  # trains on precomputed views (``--fixed-views``) instead of an inner attack
    Options: type[Options] = Options  # the method's own options (a dataclass)
    # Before options were per-method, configs held every method's options in one flat section
    # with this prefix (``clead_tau``, ``trades_beta``); such configs still load.
    legacy_prefix = ""

    def __init__(self, model: nn.Module, opts: Options, attack: Optional[Attack], attack_cfg: AttackConfig,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.opts = opts
        self.attack = attack
        self.attack_cfg = attack_cfg
        self.label_smoothing = label_smoothing

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return {}

    def forward(self, x: torch.Tensor, y: torch.Tensor, **extra: torch.Tensor) -> dict[str, Any]:
        raise NotImplementedError

    def after_step(self) -> None:
        """Called by the loop after every optimiser step (e.g. to move a momentum encoder)."""

    def step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        return self(x, y, **self.perturb(x, y))

    def ce(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)

    def run_attack(self, x: torch.Tensor, y: torch.Tensor, objective: Optional[Objective] = None) -> torch.Tensor:
        """The inner maximisation, in the configured model mode (under the loop's autocast)."""
        assert self.attack is not None
        keep = self.attack_cfg.mode == "train"
        return self.attack(self.model, x, y, objective=objective, keep_mode=keep)

    def settings(self) -> dict[str, Any]:
        """The options this method actually uses, for metadata and reports."""
        return self.opts.to_dict()

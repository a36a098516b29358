"""The baselines every claim must beat on the same budget."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from training.methods.base import Method
from training.methods.options import Options, option


class Standard(Method):
    """Cross-entropy on clean images: the undefended baseline."""

    name = "standard"

    def forward(self, x: torch.Tensor, y: torch.Tensor, **extra: torch.Tensor) -> dict[str, Any]:
        logits = self.model(x)
        loss = self.ce(logits, y)
        return {"loss": loss, "logits": logits, "ce": loss.detach()}


class PGDAT(Method):
    """PGD adversarial training (Madry et al. 2018, "Towards Deep Learning Models Resistant
    to Adversarial Attacks"): min_theta E max_{|d|<=eps} CE(f(x + d), y).

    With ``--attack-steps 1`` the attack is FGSM with a uniform random start and step
    1.25*eps: FGSM-RS fast adversarial training (Wong et al. 2020, "Fast is better than free").
    """

    name = "pgd-at"
    adversarial = True
    online_attack = True

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"x_adv": self.run_attack(x, y)}

    def forward(self, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor = None, **extra) -> dict[str, Any]:
        logits = self.model(x_adv)
        loss = self.ce(logits, y)
        return {"loss": loss, "logits": logits, "ce_adv": loss.detach()}


@dataclass
class TRADESOptions(Options):
    beta: float = option(6.0, "--beta", "TRADES: weight of KL(clean || adv) (Zhang et al. 2019 use 6)",
                         check=lambda v: v >= 0, must=">= 0")


class TRADES(Method):
    """TRADES (Zhang et al. 2019, "Theoretically Principled Trade-off between Robustness and
    Accuracy"): CE(f(x), y) + beta * KL(f(x) || f(x_adv)), where x_adv maximises the same KL
    within the eps-ball."""

    name = "trades"
    adversarial = True
    online_attack = True
    Options = TRADESOptions
    legacy_prefix = "trades_"

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            p_clean = F.softmax(self.model(x).float(), dim=1)

        def kl_objective(model, x_adv, _y):
            log_p_adv = F.log_softmax(model(x_adv).float(), dim=1)
            return F.kl_div(log_p_adv, p_clean, reduction="none").sum(1)

        return {"x_adv": self.run_attack(x, y, kl_objective)}

    def forward(self, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor = None, **extra) -> dict[str, Any]:
        logits = self.model(x)
        logits_adv = self.model(x_adv)
        ce = self.ce(logits, y)
        kl = F.kl_div(F.log_softmax(logits_adv.float(), 1), F.softmax(logits.float(), 1), reduction="batchmean")
        loss = ce + self.opts.beta * kl
        return {"loss": loss, "logits": logits_adv, "ce_clean": ce.detach(), "kl": kl.detach()}

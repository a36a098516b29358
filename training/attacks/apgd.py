"""Auto-PGD (Croce and Hein 2020, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks").

Written here rather than imported because training and the demo need it batched, on the
model's device and with our interface; the third-party AutoAttack in ``evaluation`` grades
our claims independently. APGD needs no step-size tuning: it starts at 2*eps, uses momentum
0.75 and halves the step at checkpoints where progress stalled, restarting from the best
point found.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from training.attacks.base import Attack, Objective

LogitLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference of Logits Ratio, untargeted: -(z_y - max_{j!=y} z_j) / (z_pi1 - z_pi3)."""
    z_sorted = logits.sort(dim=1).values
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    top_is_y = logits.argmax(1) == y
    z_other = torch.where(top_is_y, z_sorted[:, -2], z_sorted[:, -1])
    return -(z_y - z_other) / (z_sorted[:, -1] - z_sorted[:, -3] + 1e-12)


def targeted_dlr_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Targeted DLR: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)."""
    z_sorted = logits.sort(dim=1).values
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    z_t = logits.gather(1, target[:, None]).squeeze(1)
    return -(z_y - z_t) / (z_sorted[:, -1] - 0.5 * (z_sorted[:, -3] + z_sorted[:, -4]) + 1e-12)


class APGD(Attack):
    """APGD with cross-entropy (``loss="ce"``, the ``apgd-ce`` attack) or DLR (``apgd-dlr``).

    Args:
        eps: radius in [0, 1] pixel units.
        steps: iterations per restart (AutoAttack uses 100).
        restarts: independent random starts; a sample stops being attacked once fooled.
        rho: fraction of increasing steps below which the step size is halved.
    """

    name = "apgd-ce"

    def __init__(
        self,
        eps: float = 8 / 255,
        steps: int = 100,
        restarts: int = 1,
        loss: str = "ce",
        rho: float = 0.75,
        norm: str = "linf",
        targeted: bool = False,
    ) -> None:
        super().__init__(eps, norm, targeted)
        self.require_positive(steps=steps, restarts=restarts)
        if loss not in ("ce", "dlr"):
            raise ValueError(f"APGD loss must be 'ce' or 'dlr', got {loss!r}")
        self.steps = int(steps)
        self.restarts = int(restarts)
        self.loss = loss
        self.rho = float(rho)

    def default_objective(self) -> Objective:
        logit_loss = dlr_loss if self.loss == "dlr" else (lambda z, y: F.cross_entropy(z, y, reduction="none"))
        return lambda model, x, y: logit_loss(model(x), y)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, objective: Objective) -> torch.Tensor:
        return self._with_restarts(model, x, y, objective)

    def _with_restarts(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, objective: Objective) -> torch.Tensor:
        """Attack only the samples not yet fooled, restart after restart."""
        x_adv = x.clone()
        with torch.no_grad():
            fooled = self._fooled(model(x), y)
        for _ in range(self.restarts):
            idx = (~fooled).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            x_new, fooled_new = self._run(model, x[idx], y[idx], objective)
            x_adv[idx] = x_new
            fooled[idx] = fooled_new
        return x_adv

    def _fooled(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        pred = logits.argmax(1)
        return pred == y if self.targeted else pred != y

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, objective: Objective):
        """One APGD run. Returns (adversarial images, fooled mask).

        Long because it is one algorithm (Croce and Hein 2020, Algorithm 1) whose dozen
        per-sample state tensors (step size, best point, checkpoint counters, momentum) every
        step reads and writes; split into functions, that state would travel between them."""
        n = x.shape[0]
        shape = (-1,) + (1,) * (x.dim() - 1)
        # Checkpoint schedule: first after 22% of the steps, then shrinking by 3% of the
        # steps down to a minimum of 6% (Croce and Hein 2020, section 3.1).
        period = max(int(0.22 * self.steps), 1)
        period_min = max(int(0.06 * self.steps), 1)
        period_decrease = max(int(0.03 * self.steps), 1)

        step = torch.full((n,), 2.0 * self.eps, device=x.device)
        x_cur = self.random_init(x)
        loss, grad, logits = self.grad_and_logits(objective, model, x_cur, y)
        fooled = self._fooled(logits, y)
        x_found = torch.where(fooled.view(shape), x_cur, x)
        x_best, loss_best, grad_best = x_cur.clone(), loss.clone(), grad.clone()
        loss_best_at_check = loss_best.clone()
        reduced_at_check = torch.ones(n, dtype=torch.bool, device=x.device)
        increases = torch.zeros(n, device=x.device)
        loss_prev = loss.clone()
        x_prev = x_cur.clone()
        since_check = 0

        for i in range(self.steps):
            momentum = 0.75 if i > 0 else 1.0
            z = self.project(x_cur + step.view(shape) * self.ascent_direction(grad), x)
            x_next = self.project(x_cur + momentum * (z - x_cur) + (1 - momentum) * (x_cur - x_prev), x)
            x_prev, x_cur = x_cur, x_next

            loss, grad, logits = self.grad_and_logits(objective, model, x_cur, y)
            now_fooled = self._fooled(logits, y)
            newly = now_fooled & ~fooled
            x_found[newly] = x_cur[newly]
            fooled |= now_fooled

            increases += (loss > loss_prev).float()
            loss_prev = loss
            better = loss > loss_best
            x_best[better], grad_best[better], loss_best[better] = x_cur[better], grad[better], loss[better]

            since_check += 1
            if since_check == period:
                too_few_increases = increases < self.rho * period
                stalled = (~reduced_at_check) & (loss_best_at_check >= loss_best)
                halve = too_few_increases | stalled
                reduced_at_check = halve
                loss_best_at_check = loss_best.clone()
                step = torch.where(halve, step / 2, step)
                # Restart the halved samples from their best point.
                x_cur[halve], grad[halve] = x_best[halve], grad_best[halve]
                x_prev[halve] = x_best[halve]
                increases.zero_()
                since_check = 0
                period = max(period - period_decrease, period_min)

        return torch.where(fooled.view(shape), x_found, x_best), fooled


class APGDTargeted(APGD):
    """APGD-T: targeted DLR loss against each of the ``n_target_classes`` classes with the
    highest clean logits (AutoAttack's standard version uses 9), keeping the first success.
    ``y`` is the true label; the attack is untargeted in effect."""

    name = "apgd-t"

    def __init__(
        self,
        eps: float = 8 / 255,
        steps: int = 100,
        restarts: int = 1,
        n_target_classes: int = 9,
        rho: float = 0.75,
        norm: str = "linf",
    ) -> None:
        super().__init__(eps, steps, restarts, "dlr", rho, norm, targeted=False)
        if n_target_classes < 1:
            raise ValueError(f"n_target_classes must be >= 1, got {n_target_classes}")
        self.n_target_classes = int(n_target_classes)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, objective: Objective) -> torch.Tensor:
        with torch.no_grad():
            clean_logits = model(x)
        n_targets = min(self.n_target_classes, clean_logits.shape[1] - 1)
        # Rank classes by clean logit, skip the top one (the prediction).
        ranked = clean_logits.sort(dim=1, descending=True).indices
        x_adv = x.clone()
        fooled = self._fooled(clean_logits, y)
        for k in range(1, n_targets + 1):
            idx = (~fooled).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            target = ranked[idx, k]
            for _ in range(self.restarts):
                sub = (~fooled[idx]).nonzero().squeeze(1)
                if sub.numel() == 0:
                    break
                ids = idx[sub]
                t_sub = target[sub]
                obj = lambda m, xs, ys, t=t_sub: targeted_dlr_loss(m(xs), ys, t)  # noqa: E731
                x_new, fooled_new = self._run(model, x[ids], y[ids], obj)
                x_adv[ids] = x_new
                fooled[ids] = fooled_new
        return x_adv

    def __call__(self, model, x, y, objective: Optional[Objective] = None, keep_mode: bool = False):
        if objective is not None:
            raise ValueError("apgd-t chooses its own targeted DLR objectives; pass no objective")
        return super().__call__(model, x, y, None, keep_mode)

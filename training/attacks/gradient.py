"""FGSM, PGD and the CW-style margin attack: projected gradient ascent in L-inf or L2."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from training.attacks.base import Attack, Objective, margin_objective


class PGD(Attack):
    """Projected gradient descent (Madry et al. 2018, "Towards Deep Learning Models
    Resistant to Adversarial Attacks").

    Args:
        eps: radius in [0, 1] pixel units.
        alpha: step size in pixel units; default ``2.5 * eps / steps`` (Madry et al.).
        steps: gradient steps per restart.
        random_start: start from a uniform point of the eps-ball instead of ``x``.
        restarts: independent runs; per sample the first run that fools the model is kept,
            otherwise the one with the highest final loss.
    """

    name = "pgd"

    def __init__(
        self,
        eps: float = 8 / 255,
        alpha: Optional[float] = None,
        steps: int = 10,
        random_start: bool = True,
        restarts: int = 1,
        norm: str = "linf",
        targeted: bool = False,
    ) -> None:
        super().__init__(eps, norm, targeted)
        self.require_positive(steps=steps, restarts=restarts)
        if alpha is not None and alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        self.alpha = float(alpha) if alpha is not None else 2.5 * self.eps / steps
        self.steps = int(steps)
        self.random_start = random_start
        self.restarts = int(restarts)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, objective: Objective) -> torch.Tensor:
        best = x.clone()
        best_loss = torch.full((x.shape[0],), float("-inf"), device=x.device)
        fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for _ in range(self.restarts):
            x_adv = self.run_once(model, x, y, objective)
            if self.restarts == 1:
                return x_adv
            with torch.no_grad():
                logits = model(x_adv)
                loss = objective(model, x_adv, y)
                now_fooled = (logits.argmax(1) == y) if self.targeted else (logits.argmax(1) != y)
            # Keep a fooling point once found; among non-fooling ones keep the highest loss.
            take = (~fooled) & (now_fooled | (loss > best_loss))
            best[take] = x_adv[take]
            best_loss = torch.where(take, loss, best_loss)
            fooled |= now_fooled
        return best

    def run_once(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, objective: Objective) -> torch.Tensor:
        x_adv = self.random_init(x) if self.random_start else x.clone()
        for _ in range(self.steps):
            _, grad = self.grad_of(objective, model, x_adv, y)
            x_adv = self.project(x_adv + self.alpha * self.ascent_direction(grad), x)
        return x_adv


class FGSM(PGD):
    """Fast Gradient Sign Method (Goodfellow et al. 2015): one step of size eps.

    With ``random_start=True`` and ``alpha=1.25*eps`` it is FGSM-RS, the fast adversarial
    training attack of Wong et al. 2020 ("Fast is better than free").
    """

    name = "fgsm"

    def __init__(
        self,
        eps: float = 8 / 255,
        alpha: Optional[float] = None,
        random_start: bool = False,
        norm: str = "linf",
        targeted: bool = False,
        steps: int = 1,
        restarts: int = 1,
    ) -> None:
        if steps != 1:
            raise ValueError("FGSM takes exactly one step; use 'pgd' for more")
        if alpha is None and eps > 0:
            alpha = eps  # one full step; at eps = 0 leave it unset (PGD rejects alpha = 0)
        super().__init__(eps, alpha, 1, random_start, restarts, norm, targeted)


class CWMargin(PGD):
    """PGD on the Carlini-Wagner margin loss (Carlini and Wagner 2017, as the "CW-inf"
    attack of Madry et al. 2018): maximise max_{j != y} z_j - z_y under the eps budget.
    Insensitive to logit scaling tricks that can weaken cross-entropy PGD."""

    name = "cw"

    def default_objective(self) -> Objective:
        return margin_objective


class NFGSM(Attack):
    """N-FGSM (de Jorge et al. 2022, "Make Some Noise: Reliable and Efficient Single-Step
    Adversarial Training"): a step of size ``alpha`` (default eps) from a point drawn from
    U(-noise*eps, noise*eps), with neither the noise nor the step projected back to the
    eps-ball. The larger noise keeps single-step training clear of catastrophic overfitting
    without early stopping, at FGSM's cost.

    A training-time attack only: its perturbation reaches (noise + 1) * eps by design, so it
    is not in the evaluation registry (every attack there stays inside the eps-ball).
    """

    name = "n-fgsm"
    supported_norms = ("linf",)

    def __init__(self, eps: float = 8 / 255, alpha: Optional[float] = None, noise: float = 2.0) -> None:
        super().__init__(eps, "linf", targeted=False)
        if noise < 0:
            raise ValueError(f"noise must be >= 0 (in units of eps), got {noise}")
        self.alpha = float(alpha) if alpha is not None else self.eps
        self.noise = float(noise)
        self.bound = self.noise * self.eps + self.alpha  # the largest L-inf perturbation it makes

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, objective: Objective) -> torch.Tensor:
        x_noisy = (x + torch.empty_like(x).uniform_(-self.noise * self.eps, self.noise * self.eps)).clamp(0, 1)
        _, grad = self.grad_of(objective, model, x_noisy, y)
        return x_noisy + self.alpha * grad.sign()

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Only the [0, 1] box and the attack's own bound: no projection to the eps-ball."""
        return (x + (x_adv - x).clamp(-self.bound, self.bound)).clamp(0.0, 1.0)

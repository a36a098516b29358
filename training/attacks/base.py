"""The one attack interface: ``attack(model, x, y) -> x_adv``.

The base class owns what every attack must get right, so a subclass writes only its step:
input checks, eval-mode switching, ``enable_grad``, projection onto the eps-ball and
clamping to [0, 1]. Pixel units: images live in [0, 1], so ``eps=8/255`` is the usual
CIFAR-10 L-inf budget.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

# An objective maps (model, x_adv, y) to a per-sample loss that the attack maximises.
Objective = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]

NORMS = ("linf", "l2")


def ce_objective(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y, reduction="none")


def margin_objective(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CW margin (Carlini and Wagner 2017): max_{j != y} z_j - z_y, positive once fooled."""
    return margin(model(x), y)


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return other.amax(1) - true


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


class Attack:
    """Base class. Subclasses implement ``perturb``; callers use ``__call__``.

    Args:
        eps: radius of the threat model, in [0, 1] pixel units (L-inf or L2 per ``norm``).
        norm: ``"linf"`` or ``"l2"``.
        targeted: if true, ``y`` passed to the call is the target class to reach.
    """

    name = "attack"
    supported_norms: tuple[str, ...] = NORMS
    third_party = False  # True for adapters of other libraries' attacks (training.attacks.third_party)
    context: tuple[str, ...] = ()  # arguments an evaluation passes besides the settings (e.g. "seed")
    implementation = "clead (training.attacks)"  # who computes the attack, for reports

    def __init__(self, eps: float = 8 / 255, norm: str = "linf", targeted: bool = False) -> None:
        if eps < 0:
            raise ValueError(f"eps must be >= 0 (pixel units in [0, 1]), got {eps}")
        norm = norm.lower()
        if norm not in self.supported_norms:
            raise ValueError(f"{self.name} supports norm in {self.supported_norms}, got {norm!r}")
        self.eps = float(eps)
        self.norm = norm
        self.targeted = targeted

    @staticmethod
    def require_positive(**counts: int) -> None:
        """Refuse a count below 1 (``steps``, ``restarts``, ...) with a message naming it."""
        for name, value in counts.items():
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")

    # -- what subclasses write ------------------------------------------------------------
    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, objective: Objective) -> torch.Tensor:
        raise NotImplementedError

    def default_objective(self) -> Objective:
        return ce_objective

    # -- shared machinery ---------------------------------------------------------------
    def __call__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        objective: Optional[Objective] = None,
        keep_mode: bool = False,
    ) -> torch.Tensor:
        """Return adversarial images within the eps-ball of ``x`` and inside [0, 1].

        ``objective`` overrides what is maximised (training methods use this for TRADES'
        KL or C-LEAD's contrastive loss). ``keep_mode=True`` leaves the model's train/eval
        mode alone (some training recipes attack with batch statistics); by default the
        model is attacked in eval mode and restored afterwards.
        """
        self._check_inputs(x, y)
        if self.eps == 0:
            return x.detach().clone()
        objective = objective or self.default_objective()
        if self.targeted:
            base = objective
            objective = lambda m, xa, t: -base(m, xa, t)  # noqa: E731 - reach the target
        was_training = model.training
        if not keep_mode:
            model.eval()
        try:
            with torch.enable_grad():
                x_adv = self.perturb(model, x.detach(), y.detach(), objective)
        finally:
            model.train(was_training)
        return self.project(x_adv.detach(), x.detach())

    def _check_inputs(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f"expected NCHW images, got shape {tuple(x.shape)}")
        if not torch.is_floating_point(x):
            raise TypeError(f"images must be float in [0, 1], got dtype {x.dtype}")
        if x.numel() and (x.min() < 0 or x.max() > 1):
            raise ValueError(
                f"images must lie in [0, 1] (got range [{x.min():.3f}, {x.max():.3f}]); "
                "models normalise internally, so pass raw pixels"
            )
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"{x.shape[0]} images but {y.shape[0]} labels")

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Project onto the eps-ball around ``x`` in this attack's norm, then clamp to [0, 1]."""
        delta = x_adv - x
        if self.norm == "linf":
            delta = delta.clamp(-self.eps, self.eps)
        else:
            norms = _flat_norm(delta)
            delta = delta * torch.clamp(self.eps / (norms + 1e-12), max=1.0)
        return (x + delta).clamp(0.0, 1.0)

    def random_init(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm == "linf":
            delta = torch.empty_like(x).uniform_(-self.eps, self.eps)
        else:
            # Uniform in the L2 ball: random direction, radius ~ eps * U^(1/d).
            delta = torch.randn_like(x)
            d = x[0].numel()
            radius = self.eps * torch.rand(x.shape[0], device=x.device) ** (1.0 / d)
            delta = delta / (_flat_norm(delta) + 1e-12) * radius.view(-1, 1, 1, 1)
        return self.project(x + delta, x)

    def ascent_direction(self, grad: torch.Tensor) -> torch.Tensor:
        """Steepest ascent direction for a unit step in this norm."""
        if self.norm == "linf":
            return grad.sign()
        return grad / (_flat_norm(grad) + 1e-12)

    @staticmethod
    def grad_of(objective: Objective, model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor):
        """Per-sample loss and its gradient w.r.t. the input (model weights untouched)."""
        x_adv = x_adv.detach().requires_grad_(True)
        loss = objective(model, x_adv, y)
        (grad,) = torch.autograd.grad(loss.sum(), x_adv)
        return loss.detach(), grad.detach()

    @staticmethod
    def grad_and_logits(objective: Objective, model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor):
        """``grad_of`` plus the logits at ``x_adv``, for attacks that also check which samples
        are fooled (APGD). The logits are those of the objective's own forward pass when it
        calls the model once, on ``x_adv`` itself (every built-in objective does): the same
        numbers as a second forward pass, at no extra cost. An objective that calls the model
        otherwise (on a transformed input, or through another method) gets the second pass."""
        tap = _LogitsTap(model)
        loss, grad = Attack.grad_of(objective, tap, x_adv, y)
        logits = tap.logits_at(x_adv)
        if logits is None:
            with torch.no_grad():
                logits = model(x_adv.detach())
        return loss, grad, logits

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"{type(self).__name__}({fields})"

    def settings(self) -> dict:
        """Public settings, for reports and run configs."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


class _LogitsTap:
    """Stands in for the model inside an objective: calls it, and remembers the logits of
    each call with the input it was given. Attribute access reaches the model itself, so an
    objective that uses another of its methods (e.g. ``features``) still works; those calls
    are not recorded."""

    def __init__(self, model: nn.Module) -> None:
        self._model = model
        self._calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self._model(x)
        self._calls.append((x, out))
        return out

    def __getattr__(self, name: str):
        return getattr(self._model, name)

    def logits_at(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """The detached logits of the one call made on ``x``'s values (``x`` or a detached
        alias of it: the same storage, shape and strides); None otherwise."""
        if len(self._calls) != 1:
            return None
        seen, out = self._calls[0]
        same = (seen.data_ptr() == x.data_ptr() and seen.shape == x.shape and seen.stride() == x.stride()
                and seen.dtype == x.dtype)
        return out.detach() if same and isinstance(out, torch.Tensor) else None

"""Third-party attacks (torchattacks) as registered ``Attack``s: ``autoattack``, ``square``.

They run torchattacks, not our own attack code, so our robustness claims are never graded by
our code alone. Each is an :class:`~training.attacks.base.Attack` with the same call and
settings as ours, registered in the one attack registry (``training.attacks``): evaluation,
the CLI and the demo build them like any other. torchattacks is imported on first use.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import nn

from training.attacks.base import Attack, Objective
from training.pauses import clock


def torchattacks_version() -> str:
    import torchattacks

    return f"torchattacks {torchattacks.__version__}"


class TorchattacksAttack(Attack):
    """Base adapter: builds the torchattacks object per call (it binds the model). L-inf only;
    torchattacks maximises its own losses, so a custom ``objective`` is refused."""

    name = "torchattacks"
    supported_norms = ("linf",)
    third_party = True
    # What an evaluation passes besides the attack's settings (``evaluation.build_attack``).
    context = ("seed",)

    def __init__(self, eps: float = 8 / 255, seed: int = 0) -> None:
        super().__init__(eps=eps, norm="linf")
        self.seed = int(seed)

    @property
    def implementation(self) -> str:
        return torchattacks_version()

    def build(self, model: nn.Module):
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        # L-inf and untargeted by construction: the settings list what can be chosen.
        return {k: v for k, v in super().settings().items() if k not in ("norm", "targeted")}

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, objective: Optional[Objective] = None,
                 keep_mode: bool = False) -> torch.Tensor:
        """As every ``Attack``: the model is attacked in eval mode and left in its mode, its
        weights' gradients as they were; ``keep_mode`` is not offered (torchattacks switches
        to eval itself)."""
        if objective is not None:
            raise ValueError(f"{self.name} (torchattacks) maximises its own loss; it takes no objective")
        self._check_inputs(x, y)
        if self.eps == 0 or x.shape[0] == 0:
            return x.detach().clone()
        was_training = model.training
        # torchattacks needs gradients with respect to the input only, but some of its attacks
        # (FAB) call backward(), which would also compute and accumulate the weights'
        # gradients: the weights are frozen while it runs (the input gradients are the same;
        # FAB-T runs 1.1-1.3x faster), then given back their requires_grad and gradients.
        trainable = [p for p in model.parameters() if p.requires_grad]
        model.eval()
        try:
            for p in trainable:
                p.requires_grad_(False)
            return self.run(model, x.detach(), y.detach())
        finally:
            model.train(was_training)
            for p in trainable:
                p.requires_grad_(True)

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        attack = self.build(model)
        attack.set_device(x.device)  # torchattacks infers it from parameters; be explicit
        return attack(x, y).detach()


class Square(TorchattacksAttack):
    """Square Attack (Andriushchenko et al. 2020): score-based black-box random search.
    A black-box attack that beats the white-box ones signals gradient masking
    (Carlini et al. 2019)."""

    name = "square"

    def __init__(self, eps: float = 8 / 255, queries: int = 5000, p_init: float = 0.8, restarts: int = 1, seed: int = 0) -> None:
        super().__init__(eps, seed)
        self.queries, self.p_init, self.restarts = int(queries), float(p_init), int(restarts)

    def build(self, model: nn.Module):
        import torchattacks

        return torchattacks.Square(
            model, norm="Linf", eps=self.eps, n_queries=self.queries, n_restarts=self.restarts,
            p_init=self.p_init, loss="margin", seed=self.seed,
        )


class AutoAttack(TorchattacksAttack):
    """Standard AutoAttack (Croce and Hein 2020): APGD-CE, APGD-T (9 targets), FAB-T
    (9 targets) and Square (5000 queries), each attacking what the previous left robust.

    Composed from torchattacks' public classes rather than ``torchattacks.AutoAttack``
    because the latter runs the gradient attacks for 10 iterations instead of the paper's
    100 (torchattacks issue #196); with ``steps=10`` this is exactly
    ``torchattacks.AutoAttack(version="standard")``.

    The stages run here rather than in ``torchattacks.MultiAttack`` (the same rule: each
    sub-attack sees only the images every earlier one failed on, and an image counts as
    broken by the first sub-attack that fools it) so that each stage's time and survivors are
    recorded (``stage_log``, summed over calls) and shown as it runs: the four stages differ
    by orders of magnitude in cost, and a two-hour evaluation needs to say where it is.
    """

    name = "autoattack"
    STAGES = ("apgd-ce", "apgd-t", "fab-t", "square")
    context = ("seed", "n_classes")

    def __init__(self, eps: float = 8 / 255, steps: int = 100, queries: int = 5000, n_classes: int = 10, seed: int = 0) -> None:
        super().__init__(eps, seed)
        self.version = "standard"
        self.steps, self.queries, self.n_classes = int(steps), int(queries), int(n_classes)
        self._stage_log: dict[str, dict[str, float]] = {}
        self._progress: Optional[Callable[[str, int, int], None]] = None
        self._chunk: Optional[int] = None  # images per sub-attack call (None: the whole batch)

    @property
    def stage_log(self) -> list[dict[str, float]]:
        """Per stage, over every call so far: images attacked, images broken, seconds."""
        return [{"attack": name, **self._stage_log[name]} for name in self.STAGES if name in self._stage_log]

    def on_progress(self, callback: Optional[Callable[[str, int, int], None]], chunk: Optional[int] = None) -> None:
        """``callback(stage, images_done, images_total)`` after every ``chunk`` images of each
        stage. Chunks change which random starts an image gets (torchattacks seeds each call),
        not what is run on it."""
        self._progress, self._chunk = callback, chunk

    def mute_progress(self) -> None:
        """No more progress callbacks; the chunks stay as they are (a forked evaluation worker)."""
        self._progress = None

    def add_stage_log(self, entries: list[dict[str, float]]) -> None:
        """Add ``stage_log`` entries measured elsewhere (by the workers of a forked evaluation)."""
        for entry in entries:
            log = self._stage_log.setdefault(entry["attack"], {"images": 0, "broken": 0, "seconds": 0.0})
            for key in log:
                log[key] += entry.get(key, 0)

    def build_stages(self, model: nn.Module) -> list[tuple[str, Any]]:
        import torchattacks as ta

        common = dict(norm="Linf", eps=self.eps, seed=self.seed, n_restarts=1)
        return list(zip(self.STAGES, (
            ta.APGD(model, loss="ce", steps=self.steps, **common),
            ta.APGDT(model, steps=self.steps, n_classes=self.n_classes, **common),
            ta.FAB(model, multi_targeted=True, steps=self.steps, n_classes=self.n_classes, **common),
            ta.Square(model, n_queries=self.queries, **common),
        )))

    def build(self, model: nn.Module):
        import torchattacks as ta

        return ta.MultiAttack([attack for _, attack in self.build_stages(model)])

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        final = x.clone()
        remaining = torch.arange(x.shape[0], device=x.device)
        for name, attack in self.build_stages(model):
            attack.set_device(x.device)
            start = clock()
            fooled = torch.zeros(len(remaining), dtype=torch.bool, device=x.device)
            for part in torch.arange(len(remaining), device=x.device).split(self._chunk or len(remaining)):
                idx = remaining[part]
                x_adv = attack(x[idx], y[idx]).detach()
                with torch.no_grad():
                    fooled[part] = model(x_adv).argmax(1) != y[idx]
                final[idx[fooled[part]]] = x_adv[fooled[part]]
                if self._progress is not None:
                    self._progress(name, int(part[-1]) + 1, len(remaining))
            log = self._stage_log.setdefault(name, {"images": 0, "broken": 0, "seconds": 0.0})
            log["images"] += len(remaining)
            log["broken"] += int(fooled.sum())
            log["seconds"] += clock() - start
            remaining = remaining[~fooled]
            if len(remaining) == 0:
                break
        return final


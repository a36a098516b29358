"""Sanity checks of a robustness evaluation (Carlini et al. 2019, "On Evaluating
Adversarial Robustness", section 5; Athalye et al. 2018 on gradient masking).

A claimed robust accuracy is only believable if the attacks behave as attacks should:
iterative attacks beat single-step ones, more steps and restarts never help the model,
AutoAttack is at least as strong as PGD, eps = 0 changes nothing, a huge eps drives
accuracy to about zero, and a black-box attack is no stronger than the white-box ones
(otherwise gradients are masked). ``run_sanity_checks`` measures all of these on one set
of images and returns one ``Check`` per property.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
import torch
from torch import nn

from training.data import ImageSet


@dataclass
class Check:
    """One property: whether it held, and the accuracies (fractions) it compared."""

    name: str
    passed: bool
    values: dict[str, float]

    def as_dict(self) -> dict:
        return asdict(self)


def run_sanity_checks(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = 8 / 255, *,
    tol: float = 0.02, large_eps: float = 0.5, large_eps_max_accuracy: float = 0.05,
    pgd_steps: int = 10, strong_steps: int = 50, strong_restarts: int = 3, square_queries: int = 1000,
    autoattack: bool = True, autoattack_steps: int = 100, autoattack_queries: int = 5000,
    batch_size: int = 256, device: str | torch.device = "cpu", seed: int = 0, workers: int = 1,
) -> list[Check]:
    """Measure every check on images ``x`` ([0, 1] floats) with labels ``y``.

    ``tol`` is the slack (fraction of images) allowed to comparisons between randomised
    attacks; the eps = 0 check is exact.
    """
    from training.evaluation.runner import correct_mask, prepare_model, robust_mask
    from training.evaluation.specs import AttackSpec, build_attack

    device = torch.device(device)
    data = ImageSet((x.clamp(0, 1) * 255).round().to(torch.uint8).cpu(), y.cpu())
    was_training = prepare_model(model, device)
    try:
        with torch.no_grad():
            n_classes = int(model(x[:1].to(device)).shape[1])
        clean = correct_mask(model, data, batch_size, device)

        def acc(name: str, at_eps: float = eps, **settings) -> float:
            attack = build_attack(AttackSpec(name, settings), at_eps, n_classes, seed)
            return robust_mask(model, attack, data, clean, batch_size, device, name,
                               seed=seed, workers=workers).float().mean().item()

        v = {"clean": clean.float().mean().item(), "fgsm": acc("fgsm"), "pgd": acc("pgd", steps=pgd_steps)}
        v["pgd_strong"] = acc("pgd", steps=strong_steps, restarts=strong_restarts)
        v["pgd_eps0"] = acc("pgd", 0.0, steps=pgd_steps)
        v["pgd_large_eps"] = acc("pgd", large_eps, steps=strong_steps)
        v["square"] = acc("square", queries=square_queries)
        if autoattack:
            v["autoattack"] = acc("autoattack", steps=autoattack_steps, queries=autoattack_queries)
    finally:
        model.train(was_training)
    return _judge(v, tol, large_eps_max_accuracy)


def _judge(v: dict[str, float], tol: float, large_eps_max_accuracy: float) -> list[Check]:
    white_box = min(v["fgsm"], v["pgd"], v["pgd_strong"])  # not AutoAttack: it contains Square
    pick = lambda *keys: {k: v[k] for k in keys if k in v}  # noqa: E731
    attacks = [k for k in v if k != "clean"]
    checks = [
        Check("robust accuracy <= clean accuracy", all(v[k] <= v["clean"] for k in attacks), dict(v)),
        Check("eps=0 leaves accuracy unchanged", v["pgd_eps0"] == v["clean"], pick("clean", "pgd_eps0")),
        Check("PGD no weaker than FGSM", v["pgd"] <= v["fgsm"] + tol, pick("pgd", "fgsm")),
        Check("more PGD steps/restarts no weaker", v["pgd_strong"] <= v["pgd"] + tol, pick("pgd_strong", "pgd")),
        Check("large eps drives accuracy to ~0", v["pgd_large_eps"] <= large_eps_max_accuracy, pick("pgd_large_eps")),
        Check("black-box (Square) no stronger than white-box", v["square"] >= white_box - tol,
              {**pick("square"), "best_white_box": white_box}),
    ]
    if "autoattack" in v:
        checks.append(Check("AutoAttack no weaker than PGD", v["autoattack"] <= v["pgd"] + tol, pick("autoattack", "pgd")))
    return checks


def format_checks(checks: list[Check]) -> str:
    """One line per check, for logs."""
    rows = []
    for c in checks:
        values = ", ".join(f"{k}={100 * val:.1f}%" for k, val in c.values.items())
        rows.append(f"[{'ok' if c.passed else 'FAIL'}] {c.name}: {values}")
    return "\n".join(rows)


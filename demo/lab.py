"""The attack lab's compute, without any UI: load the two models, turn an upload into a
model input, attack, and describe what happened.

Everything here is plain functions on tensors and PIL images so that it is tested without
Gradio (``demo.app`` only lays it out). Images follow the project contract: float [0, 1],
NCHW; the models normalise internally, so nothing here normalises.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from PIL import Image
from torch import nn

from serving.predictor import Limits, RequestError, decode_image

ROLES = ("baseline", "hardened")
# Where the white-box attack is computed: against one model (the other sees the same image,
# a transfer attack) or against each model separately.
TARGETS = {
    "baseline": "attack the baseline (hardened sees the same image)",
    "hardened": "attack the hardened model (baseline sees the same image)",
    "each": "attack each model on its own (white-box against each)",
}
TOP_K = 5
UPLOAD_LIMITS = Limits()  # the servers' limits (bytes, pixels), so the demo refuses what they refuse
EPS_STEPS = 16  # the UI offers eps = k/255 for k in 0..EPS_STEPS


@dataclass(frozen=True)
class AttackChoice:
    """One entry of the demo's attack menu: a registry name and fixed settings."""

    label: str
    registry_name: str
    uses_steps: bool = True


# Only L-inf attacks: the eps slider is in L-inf pixel units. APGD-T is left out because it
# runs one APGD per target class (9x the cost), too slow for a one-second interactive demo.
ATTACK_CHOICES = {
    c.label: c
    for c in (
        AttackChoice("FGSM", "fgsm", uses_steps=False),
        AttackChoice("PGD", "pgd"),
        AttackChoice("CW-margin", "cw"),
        AttackChoice("APGD-CE", "apgd-ce"),
        AttackChoice("APGD-DLR", "apgd-dlr"),
    )
}


class MissingArtifactsError(FileNotFoundError):
    """The model artifacts the demo needs are not on disk."""


class BadImageError(ValueError):
    """An upload that is not a usable image; the message is meant for the user."""


@dataclass
class LabModel:
    """One loaded artifact and the role it plays in the comparison."""

    role: str
    module: nn.Module
    meta: dict[str, Any]
    path: Path

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def input_size(self) -> tuple[int, int, int]:
        return tuple(self.meta.get("input_size", (3, 32, 32)))

    @property
    def title(self) -> str:
        """What the UI calls it: the role, plus the artifact's own name when it differs."""
        name = self.meta.get("name")
        return self.role if not name or name == self.role else f"{self.role} ({name})"


def load_models(baseline: str | Path, hardened: str | Path) -> dict[str, LabModel]:
    """Load both artifacts; all missing files are named in one error, with the flags to fix it."""
    from training.export import load_artifact  # torch.jit loading only when asked for

    paths = {"baseline": Path(baseline), "hardened": Path(hardened)}
    missing = [f"{role}: {p}" for role, p in paths.items() if not p.is_file()]
    if missing:
        raise MissingArtifactsError(
            "model artifact(s) not found:\n  " + "\n  ".join(missing) + "\n"
            "Train and export the shipped models first, or point the demo at exported "
            "artifacts with --baseline PATH --hardened PATH."
        )
    models = {}
    for role, path in paths.items():
        module, meta = load_artifact(path)
        if "classes" not in meta:
            raise ValueError(f"{path}: metadata has no 'classes'; export it with training.export.export_artifact")
        models[role] = LabModel(role, module, meta, path)
    sizes = {m.input_size for m in models.values()}
    if len(sizes) != 1:
        raise ValueError(f"the two models expect different input sizes {sorted(sizes)}; the demo attacks one image for both")
    return models


def warm_up(models: dict[str, LabModel], passes: int = 3) -> None:
    """Run a few forward+backward passes at load time: TorchScript's profiling executor
    optimises a graph over its first runs, which otherwise makes the first click take
    several seconds instead of about one."""
    for model in models.values():
        x = torch.rand(1, *model.input_size, requires_grad=True)
        for _ in range(passes):
            model.module(x).sum().backward()


# -- images ---------------------------------------------------------------------------------
def load_upload(path: str | Path, input_size: tuple[int, int, int], limits: Limits = UPLOAD_LIMITS) -> torch.Tensor:
    """An upload as the models see it: a 1xCxHxW float tensor in [0, 1].

    Decoded by the servers' own ``serving.predictor.decode_image`` (the same formats, byte and pixel
    limits, EXIF orientation, transparency onto white, centre crop and bicubic resize), so an
    image gives the same tensor in the demo as in TorchServe or Triton; its refusals become
    ``BadImageError`` with the server's message.
    """
    path = Path(path)
    size = path.stat().st_size
    if size > limits.max_bytes:  # before reading it into memory
        raise BadImageError(f"{path.name} is {size / 2**20:.1f} MiB; the limit is {limits.max_bytes / 2**20:.0f} MiB")
    try:
        return decode_image(path.read_bytes(), input_size, limits).unsqueeze(0)
    except RequestError as err:
        if err.code == 415:  # the server's "body is not ..." reads oddly for a file the user picked
            raise BadImageError(f"{path.name} is not an image the models read (JPEG, PNG, WebP, BMP or GIF)") from None
        raise BadImageError(f"{path.name}: {err.message}") from None


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """1x3xHxW (or 3xHxW) in [0, 1] -> HxWx3 uint8, for display and PNG encoding."""
    x = x.detach().cpu()
    if x.dim() == 4:
        x = x[0]
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Round to 8-bit pixel values, so what the user sees or downloads is what was classified.

    The clean image comes from 8-bit pixels and eps is a multiple of 1/255 in the UI, so
    rounding keeps the adversarial image inside the eps-ball.
    """
    return (x * 255).round() / 255


def perturbation_image(delta: torch.Tensor, eps: float) -> np.ndarray:
    """Show the perturbation: mid-grey is zero, full black/white is -eps/+eps per channel."""
    scale = max(eps, 1e-12)
    return to_uint8((0.5 + delta / (2 * scale)).clamp(0, 1))


def upscale(array: np.ndarray, size: int = 256) -> Image.Image:
    """Nearest-neighbour upscaling, so 32x32 pixels stay visible as pixels in the browser."""
    img = Image.fromarray(array)
    factor = max(1, size // max(img.size))
    return img.resize((img.width * factor, img.height * factor), Image.Resampling.NEAREST)


def eps_label(eps: float) -> str:
    """8/255 rather than 0.0314: how robustness papers and the UI state budgets (training's ``fmt_eps``).

    Two things are the demo's own: a measured L-inf distance is put back on the 8-bit grid first
    (float32 differences of 8-bit pixels are off by ~1e-5 in units of 1/255, more than ``fmt_eps``
    treats as a round number of 255ths), and zero is shown as 0/255 beside the other budgets.
    """
    from training.evaluation import fmt_eps

    k = eps * 255
    if abs(k - round(k)) < 1e-3:
        eps = round(k) / 255
    return fmt_eps(eps) if eps else "0/255"


# -- predictions ------------------------------------------------------------------------------
TopK = list[tuple[str, float]]
# A predictor maps (model, 1x3xHxW image in [0, 1]) to the top-k (label, probability) list:
# the local module by default, or a remote server (see demo.remote).
Predictor = Callable[[LabModel, torch.Tensor], TopK]


def local_topk(model: LabModel, x: torch.Tensor, k: int = TOP_K) -> TopK:
    with torch.no_grad():
        probs = torch.softmax(model.module(x).float(), dim=1)[0]
    values, indices = probs.topk(min(k, probs.numel()))
    classes = model.classes
    return [(classes[i], float(p)) for p, i in zip(values.tolist(), indices.tolist())]


def local_suspicion(model: LabModel, x: torch.Tensor) -> Optional[float]:
    """The artifact's own suspicion score of ``x`` (training/suspicion.py), or None without one."""
    method = getattr(model.module, "suspicion", None)
    if method is None:
        return None
    with torch.no_grad():
        return float(method(x)[2][0])


def suspicion_text(score: Optional[float], threshold: float) -> str:
    if score is None:
        return ""
    return f"suspicion {score:.2f}" + (" (flagged)" if score > threshold else "")


@dataclass
class Outcome:
    """What one model saw: its clean and adversarial predictions and the image it was shown."""

    model: str
    attacked_against: str  # the role whose gradients built the adversarial image
    x_adv: torch.Tensor
    delta: torch.Tensor
    clean: TopK
    adversarial: TopK
    clean_suspicion: Optional[float] = None  # the artifact's suspicion score, when it has one
    adversarial_suspicion: Optional[float] = None
    threshold: float = 0.95  # flagged above this (the artifact's metadata)

    @property
    def linf(self) -> float:
        return float(self.delta.abs().max())

    @property
    def l2(self) -> float:
        return float(self.delta.flatten().norm())

    @property
    def fooled(self) -> bool:
        return self.clean[0][0] != self.adversarial[0][0]

    def verdict(self) -> str:
        clean, adv = self.clean[0][0], self.adversarial[0][0]
        text = f"{self.model} fooled: {clean} -> {adv}" if self.fooled else f"{self.model} holds: {clean}"
        if self.clean_suspicion is None or self.adversarial_suspicion is None:
            return text
        return (f"{text} ({suspicion_text(self.clean_suspicion, self.threshold)} clean, "
                f"{suspicion_text(self.adversarial_suspicion, self.threshold)} adversarial)")


@dataclass
class LabResult:
    x: torch.Tensor
    attack: str
    eps: float
    steps: int
    target: str
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    seconds: float = 0.0

    def verdict(self) -> str:
        return "; ".join(o.verdict() for o in self.outcomes.values())

    def describe(self) -> str:
        choice = ATTACK_CHOICES[self.attack]
        name = f"{self.attack}-{self.steps}" if choice.uses_steps else self.attack
        return f"{name}, eps {eps_label(self.eps)}, {TARGETS[self.target]}, {self.seconds:.2f} s"


def run_lab(
    models: dict[str, LabModel],
    x: torch.Tensor,
    attack: str,
    eps: float,
    steps: int,
    target: str,
    predict: Optional[Predictor] = None,
    seed: int = 0,
    progress: Optional[Callable[[float, str], None]] = None,
) -> LabResult:
    """Attack ``x`` (1x3xHxW in [0, 1]) and report both models' clean and adversarial top-k.

    The attack is untargeted from the attacked model's own clean prediction, so "fooled"
    means the prediction changed. Seeded, so the same inputs give the same picture.
    """
    adversary, steps = build_adversary(attack, eps, steps, target)
    predict = predict or local_topk
    report = progress or (lambda fraction, desc: None)
    start = time.perf_counter()

    report(0.0, "clean predictions")
    clean = {role: predict(models[role], x) for role in ROLES}
    against = {role: (role if target == "each" else target) for role in ROLES}
    adversarial = attack_sources(models, x, adversary, sorted(set(against.values()), key=ROLES.index), attack, seed,
                                 report)
    report(0.9, "adversarial predictions")
    result = LabResult(x, attack, eps, steps, target)
    for role in ROLES:
        x_adv = adversarial[against[role]]
        result.outcomes[role] = Outcome(
            models[role].title, against[role], x_adv, x_adv - x, clean[role], predict(models[role], x_adv),
            local_suspicion(models[role], x), local_suspicion(models[role], x_adv),
            float((models[role].meta.get("suspicion") or {}).get("threshold", 0.95)),
        )
    result.seconds = time.perf_counter() - start
    report(1.0, "done")
    return result


def build_adversary(attack: str, eps: float, steps: int, target: str) -> tuple[Callable, int]:
    """The menu's ``attack`` from training's registry, checked with ``target``: (attack, steps it runs)."""
    from training.attacks import create_attack

    if attack not in ATTACK_CHOICES:
        raise ValueError(f"unknown attack {attack!r}; choose from {', '.join(ATTACK_CHOICES)}")
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose from {', '.join(TARGETS)}")
    if not 0 <= eps <= 1:
        raise ValueError(f"eps must be in [0, 1] pixel units, got {eps}")
    choice = ATTACK_CHOICES[attack]
    steps = int(steps) if choice.uses_steps else 1
    kwargs = {"eps": eps, "steps": steps} if choice.uses_steps else {"eps": eps}
    return create_attack(choice.registry_name, **kwargs), steps


def attack_sources(models: dict[str, LabModel], x: torch.Tensor, adversary: Callable, sources: list[str],
                   attack: str, seed: int, report: Callable[[float, str], None]) -> dict[str, torch.Tensor]:
    """The quantised adversarial image built against each model role in ``sources``."""
    adversarial: dict[str, torch.Tensor] = {}
    for i, source in enumerate(sources):
        report(0.1 + 0.8 * i / 2, f"{attack} against the {source} model")
        model = models[source]
        # Untargeted from the local model's own clean prediction (uploads have no true label).
        with torch.no_grad():
            y = model.module(x).argmax(1)
        with torch.random.fork_rng():
            torch.manual_seed(seed)  # random starts are repeatable
            adversarial[source] = quantize(adversary(model.module, x, y))
    return adversarial

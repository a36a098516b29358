"""Robustness evaluation: clean and adversarial accuracy on a fixed, class-balanced subset.

``evaluate(model, data, attacks, ...)`` is the library function; ``add_arguments`` / ``run``
make it the ``clead-train eval`` subcommand, which writes ``report.json`` (rewritten after
every attack, so ``--resume`` continues a long run), ``report.md`` and
``robustness_curve.png``.

Attacks are named as ``name[:key=value[:key=value...]]``, e.g.
``fgsm,pgd:steps=50:restarts=5,cw30,apgd-t,autoattack``. Our own attacks come from
``training.attacks``; ``autoattack`` and ``square`` run torchattacks, a third-party
implementation, so our claims are never graded by our own code alone.

Robust accuracy is counted per image, and only images the model classifies correctly are
attacked (a misclassified clean image is already non-robust, as in AutoAttack and
RobustBench). The "worst case" row counts an image as robust only if it survives every
attack run under the main L-inf threat model.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from training.attacks import attack_names, create_attack
from training.data import ImageSet

THIRD_PARTY = ("autoattack", "square")
DEFAULT_ATTACKS = "fgsm,pgd,cw,apgd-ce,apgd-t,autoattack"
DEFAULT_L2_EPS = 0.5  # the standard CIFAR-10 L2 budget (RobustBench), for pgd-l2

# Evaluation defaults from the robustness literature; settings given on the command line win.
# PGD-20 and CW-30 with step eps/4 (2/255 at 8/255) are the TRADES / MART table settings;
# APGD and AutoAttack use the 100 iterations of Croce and Hein 2020.
EVAL_DEFAULTS: dict[str, dict[str, Any]] = {
    "pgd": {"steps": 20},
    "pgd-l2": {"steps": 20, "eps": DEFAULT_L2_EPS},
    "cw": {"steps": 30},
    "apgd-ce": {"steps": 100},
    "apgd-dlr": {"steps": 100},
    "apgd-t": {"steps": 100},
    "square": {"queries": 5000, "p_init": 0.8, "restarts": 1},
    "autoattack": {"steps": 100, "queries": 5000},
}
_STEP_FRACTION = {"pgd": 0.25, "cw": 0.25}  # alpha = eps * this unless given
_SHORTHAND = re.compile(r"^(pgd|cw)(\d+)$")  # "pgd20" = "pgd:steps=20", as papers write it


# ---------------------------------------------------------------------------------------
# Parsing: eps values, attack specs, subset sizes
# ---------------------------------------------------------------------------------------
def parse_eps(text: str | float) -> float:
    """``"8/255"`` or ``"0.031"`` -> float in [0, 1] pixel units."""
    try:
        value = float(Fraction(str(text).strip()))
    except (ValueError, ZeroDivisionError) as exc:
        raise ValueError(f"cannot read eps {text!r}: write a fraction like 8/255 or a float like 0.031") from exc
    if not 0 <= value <= 1:
        raise ValueError(f"eps {text!r} = {value:.4g} is outside [0, 1]; eps is in pixel units (8/255, not 8)")
    return value


def _parse_value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for parse in (int, lambda t: float(Fraction(t))):
        try:
            return parse(text)
        except (ValueError, ZeroDivisionError):
            pass
    return text


@dataclass
class AttackSpec:
    """One attack to run: registry (or third-party) name, explicit settings, label as written."""

    name: str
    settings: dict[str, Any] = field(default_factory=dict)
    label: str = ""

    def __post_init__(self) -> None:
        self.label = self.label or self.name

    @property
    def third_party(self) -> bool:
        return self.name in THIRD_PARTY


def valid_attack_names() -> list[str]:
    return attack_names() + list(THIRD_PARTY)


def parse_attacks(text: str | Sequence[str]) -> list[AttackSpec]:
    """``"fgsm,pgd:steps=50:restarts=5,cw30,autoattack"`` -> list of specs."""
    items = text.split(",") if isinstance(text, str) else list(text)
    specs = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        name, *pairs = item.split(":")
        name = name.strip().lower()
        settings: dict[str, Any] = {}
        if m := _SHORTHAND.match(name):
            name, settings["steps"] = m.group(1), int(m.group(2))
        if name not in valid_attack_names():
            raise ValueError(f"unknown attack {name!r} in {item!r}; valid: {', '.join(valid_attack_names())}")
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"attack setting {pair!r} in {item!r} is not key=value (e.g. pgd:steps=50:restarts=5)")
            settings[key.strip()] = _parse_value(value.strip())
        specs.append(AttackSpec(name, settings, item))
    if not specs:
        raise ValueError(f"no attacks given; valid: {', '.join(valid_attack_names())}")
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"attack list {labels} names the same attack twice")
    return specs


def as_specs(attacks: Sequence[AttackSpec | str] | str) -> list[AttackSpec]:
    if isinstance(attacks, str):
        return parse_attacks(attacks)
    return [a if isinstance(a, AttackSpec) else parse_attacks([a])[0] for a in attacks]


def parse_n(text: str | int | None) -> Optional[int]:
    """``"all"`` / None -> None (every image); otherwise a positive count."""
    if text is None or str(text).strip().lower() == "all":
        return None
    try:
        n = int(text)
    except ValueError:
        raise ValueError(f"--n must be a positive integer or 'all', got {text!r}") from None
    if n < 1:
        raise ValueError(f"--n must be a positive integer or 'all', got {n}")
    return n


# ---------------------------------------------------------------------------------------
# Third-party attacks (torchattacks), behind our ``attack(model, x, y) -> x_adv`` interface
# ---------------------------------------------------------------------------------------
def torchattacks_version() -> str:
    import torchattacks

    return f"torchattacks {torchattacks.__version__}"


class TorchattacksAttack:
    """Base adapter: builds the torchattacks object per call (it binds the model)."""

    name = "torchattacks"
    norm = "linf"

    def __init__(self, eps: float, seed: int = 0) -> None:
        self.eps = float(eps)
        self.seed = int(seed)

    @property
    def implementation(self) -> str:
        return torchattacks_version()

    def build(self, model: nn.Module):
        raise NotImplementedError

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.eps == 0 or x.shape[0] == 0:
            return x.detach().clone()
        attack = self.build(model)
        attack.set_device(x.device)  # torchattacks infers it from parameters; be explicit
        return attack(x.detach(), y.detach()).detach()

    def settings(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


class Square(TorchattacksAttack):
    """Square Attack (Andriushchenko et al. 2020): score-based black-box random search.
    A black-box attack that beats the white-box ones signals gradient masking
    (Carlini et al. 2019)."""

    name = "square"

    def __init__(self, eps: float, queries: int = 5000, p_init: float = 0.8, restarts: int = 1, seed: int = 0) -> None:
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
    """

    name = "autoattack"

    def __init__(self, eps: float, steps: int = 100, queries: int = 5000, n_classes: int = 10, seed: int = 0) -> None:
        super().__init__(eps, seed)
        self.version = "standard"
        self.steps, self.queries, self.n_classes = int(steps), int(queries), int(n_classes)

    def build(self, model: nn.Module):
        import torchattacks as ta

        common = dict(norm="Linf", eps=self.eps, seed=self.seed, n_restarts=1)
        return ta.MultiAttack([
            ta.APGD(model, loss="ce", steps=self.steps, **common),
            ta.APGDT(model, steps=self.steps, n_classes=self.n_classes, **common),
            ta.FAB(model, multi_targeted=True, steps=self.steps, n_classes=self.n_classes, **common),
            ta.Square(model, n_queries=self.queries, **common),
        ])


def build_attack(spec: AttackSpec, eps: float, n_classes: int = 10, seed: int = 0):
    """An attack object for ``spec`` with evaluation defaults; ``eps`` unless the spec sets one."""
    settings = {**EVAL_DEFAULTS.get(spec.name, {}), **spec.settings}
    settings.setdefault("eps", eps)
    settings["eps"] = parse_eps(settings["eps"])
    if spec.name in _STEP_FRACTION and "alpha" not in settings and settings["eps"] > 0:
        settings["alpha"] = settings["eps"] * _STEP_FRACTION[spec.name]
    try:
        if spec.name == "autoattack":
            return AutoAttack(n_classes=n_classes, seed=seed, **settings)
        if spec.name == "square":
            return Square(seed=seed, **settings)
        return create_attack(spec.name, **settings)
    except TypeError as exc:
        raise ValueError(f"bad settings for attack {spec.label!r}: {exc}") from exc


def implementation_of(attack) -> str:
    return getattr(attack, "implementation", "clead (training.attacks)")


# ---------------------------------------------------------------------------------------
# Subsets and batched accuracy
# ---------------------------------------------------------------------------------------
def balanced_subset(labels: torch.Tensor, n: Optional[int], seed: int = 0) -> torch.Tensor:
    """Sorted indices of a seeded, class-balanced subset of size ``n`` (all if None).

    Classes are drawn round-robin from one seeded shuffle, so a smaller ``n`` with the same
    seed is a subset of a larger one (the robustness curve's images are among the report's).
    """
    total = len(labels)
    if n is None or n >= total:
        return torch.arange(total)
    perm = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    shuffled = labels[perm]
    rank = torch.empty(total, dtype=torch.long)
    for c in shuffled.unique():
        where = (shuffled == c).nonzero().squeeze(1)
        rank[where] = torch.arange(len(where))
    order = torch.argsort(rank * (int(labels.max()) + 1) + shuffled, stable=True)
    return perm[order[:n]].sort().values


def _fingerprint(index: torch.Tensor, data: ImageSet) -> str:
    digest = hashlib.sha1(index.numpy().tobytes())
    digest.update(data.labels[index].numpy().tobytes())
    return digest.hexdigest()


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, leave=False, file=sys.stderr)


def _batches(x_all: torch.Tensor, index: torch.Tensor, batch_size: int, device: torch.device):
    for chunk in index.split(batch_size):
        yield chunk, x_all[chunk].to(device).float().div_(255)


@torch.no_grad()
def correct_mask(
    model: nn.Module, data: ImageSet, batch_size: int, device: torch.device, progress: bool = False
) -> torch.Tensor:
    """Per-image clean correctness (bool, on CPU)."""
    out = torch.zeros(len(data), dtype=torch.bool)
    with _progress(len(data), "clean", progress) as bar:
        for chunk, x in _batches(data.images, torch.arange(len(data)), batch_size, device):
            out[chunk] = (model(x).argmax(1).cpu() == data.labels[chunk])
            bar.update(len(chunk))
    return out


def robust_mask(
    model: nn.Module,
    attack: Callable,
    data: ImageSet,
    clean_correct: torch.Tensor,
    batch_size: int,
    device: torch.device,
    desc: str = "attack",
    progress: bool = False,
) -> torch.Tensor:
    """Per-image robustness: correct on clean input and on the attack's output."""
    robust = clean_correct.clone()
    targets = clean_correct.nonzero().squeeze(1)
    with _progress(len(targets), desc, progress) as bar:
        for chunk, x in _batches(data.images, targets, batch_size, device):
            y = data.labels[chunk].to(device)
            x_adv = attack(model, x, y)
            check_threat_model(x_adv, x, attack.eps, getattr(attack, "norm", "linf"), desc)
            with torch.no_grad():
                robust[chunk] = (model(x_adv).argmax(1) == y).cpu()
            bar.update(len(chunk))
    return robust


def check_threat_model(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str, name: str, tol: float = 1e-5) -> None:
    """An attack whose output leaves the eps-ball or [0, 1] would inflate its success: refuse it."""
    if x_adv.shape != x.shape:
        raise RuntimeError(f"attack {name} returned shape {tuple(x_adv.shape)} for inputs {tuple(x.shape)}")
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    if size.numel() and size.max() > eps + tol:
        raise RuntimeError(f"attack {name} returned a perturbation of {norm} size {size.max():.6f} > eps {eps:.6f}")
    if x_adv.numel() and (x_adv.min() < -tol or x_adv.max() > 1 + tol):
        raise RuntimeError(f"attack {name} returned images outside [0, 1]")


# ---------------------------------------------------------------------------------------
# The library entry point
# ---------------------------------------------------------------------------------------
def prepare_model(model: nn.Module, device: torch.device) -> bool:
    """Move to ``device`` and switch to eval mode; returns the mode to restore.

    Like RobustBench, warn when handed a model in train mode: BatchNorm would use batch
    statistics and dropout would be live, which misstates robustness.
    """
    was_training = model.training
    if was_training:
        warnings.warn("model was passed in train mode; evaluating it in eval mode", stacklevel=3)
    model.to(device).eval()
    return was_training


def _mask_str(mask: torch.Tensor) -> str:
    return "".join("1" if v else "0" for v in mask.tolist())


def _mask_of(text: str) -> torch.Tensor:
    return torch.tensor([c == "1" for c in text], dtype=torch.bool)


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def evaluate(
    model: nn.Module,
    data: ImageSet,
    attacks: Sequence[AttackSpec | str] | str = DEFAULT_ATTACKS,
    eps: float = 8 / 255,
    n: Optional[int] = 1000,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: bool = True,
    resume_from: Optional[dict] = None,
    on_update: Optional[Callable[[dict], None]] = None,
) -> dict:
    """Clean and per-attack robust accuracy of ``model`` on ``n`` class-balanced images.

    Every attack runs from the same seed, so results do not depend on the order of the
    list. ``resume_from`` (an earlier report on the same images) skips attacks whose name,
    eps and settings match; ``on_update`` receives the partial report after each attack.
    """
    specs = as_specs(attacks)
    device = torch.device(device)
    index = balanced_subset(data.labels, n, seed)
    subset = data.subset(index)
    data_info = {"n": len(subset), "of": len(data), "seed": seed, "class_balanced": n is not None,
                 "indices_sha1": _fingerprint(index, data)}
    previous = _reusable(resume_from, data_info)
    was_training = prepare_model(model, device)
    try:
        with torch.no_grad():
            n_classes = int(model(subset.images[:1].to(device).float() / 255).shape[1])
        start = time.perf_counter()
        clean = correct_mask(model, subset, batch_size, device, progress)
        report: dict[str, Any] = {
            "eps": eps,
            "data": data_info,
            "clean": {"accuracy": clean.float().mean().item(), "n": len(subset),
                      "seconds": time.perf_counter() - start, "correct_mask": _mask_str(clean)},
            "attacks": [],
        }
        for spec in specs:
            entry = _run_one(model, spec, subset, clean, eps, n_classes, batch_size, device, seed, progress, previous)
            report["attacks"].append(entry)
            report["worst_case"] = worst_case(report)
            if on_update:
                on_update(report)
        report["worst_case"] = worst_case(report)
        return report
    finally:
        model.train(was_training)


def _reusable(resume_from: Optional[dict], data_info: dict) -> dict[str, dict]:
    if not resume_from:
        return {}
    if resume_from.get("data", {}).get("indices_sha1") != data_info["indices_sha1"]:
        warnings.warn("--resume: the earlier report used other images (n, seed or data differ); re-running every attack")
        return {}
    return {json.dumps([r["attack"], r["settings"]], sort_keys=True): r for r in resume_from.get("attacks", [])}


def _run_one(model, spec, subset, clean, eps, n_classes, batch_size, device, seed, progress, previous) -> dict:
    attack = build_attack(spec, eps, n_classes, seed)
    settings = _jsonable(attack.settings())
    key = json.dumps([spec.name, settings], sort_keys=True)
    if key in previous:
        _say(f"{spec.label}: reusing the result in report.json (same settings and images)", progress)
        return {**previous[key], "label": spec.label, "resumed": True}
    torch.manual_seed(seed)  # each attack's random starts independent of the list order
    start = time.perf_counter()
    robust = robust_mask(model, attack, subset, clean, batch_size, device, spec.label, progress)
    entry = {
        "attack": spec.name,
        "label": spec.label,
        "implementation": implementation_of(attack),
        "accuracy": robust.float().mean().item(),
        "n": len(subset),
        "eps": attack.eps,
        "norm": getattr(attack, "norm", "linf"),
        "settings": settings,
        "seconds": time.perf_counter() - start,
        "robust_mask": _mask_str(robust),
    }
    _say(f"{spec.label}: {100 * entry['accuracy']:.2f}% robust ({entry['seconds']:.1f} s)", progress)
    return entry


def _say(text: str, progress: bool) -> None:
    if progress:
        from tqdm.auto import tqdm

        tqdm.write(text, file=sys.stderr)


def worst_case(report: dict) -> dict:
    """Per image, robust only if it survived every attack under the main L-inf threat model."""
    same = [r for r in report["attacks"] if r["norm"] == "linf" and abs(r["eps"] - report["eps"]) < 1e-9]
    mask = _mask_of(report["clean"]["correct_mask"])
    for r in same:
        mask &= _mask_of(r["robust_mask"])
    return {"accuracy": mask.float().mean().item(), "n": len(mask), "attacks": [r["label"] for r in same]}


# ---------------------------------------------------------------------------------------
# Robustness curve
# ---------------------------------------------------------------------------------------
def robustness_curve(
    model: nn.Module,
    data: ImageSet,
    attacks: Sequence[AttackSpec],
    eps_values: Sequence[float],
    n: Optional[int] = 200,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Accuracy versus eps (L-inf attacks only) on ``n`` class-balanced images."""
    attacks, device = as_specs(attacks), torch.device(device)
    subset = data.subset(balanced_subset(data.labels, n, seed))
    was_training = prepare_model(model, device)
    try:
        with torch.no_grad():
            n_classes = int(model(subset.images[:1].to(device).float() / 255).shape[1])
        clean = correct_mask(model, subset, batch_size, device)
        curves: dict[str, list[float]] = {}
        worst = [clean.clone() for _ in eps_values]
        for spec in attacks:
            if build_attack(spec, 8 / 255, n_classes, seed).norm != "linf":
                continue
            curves[spec.label] = []
            for i, eps in enumerate(eps_values):
                torch.manual_seed(seed)
                attack = build_attack(AttackSpec(spec.name, {**spec.settings, "eps": eps}, spec.label), eps, n_classes, seed)
                desc = f"curve {spec.label} eps={fmt_eps(eps)}"
                robust = robust_mask(model, attack, subset, clean, batch_size, device, desc, progress)
                curves[spec.label].append(robust.float().mean().item())
                worst[i] &= robust
        if len(curves) > 1:
            curves["worst case"] = [w.float().mean().item() for w in worst]
        return {"eps": list(eps_values), "n": len(subset), "accuracy": curves}
    finally:
        model.train(was_training)


def plot_curve(curve: dict, path: str | Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    xs = [255 * e for e in curve["eps"]]
    for label, ys in curve["accuracy"].items():
        style = dict(color="black", linestyle="--") if label == "worst case" else {}
        ax.plot(xs, [100 * y for y in ys], marker="o", label=label, **style)
    ax.set_xlabel("eps (L-inf, x/255)")
    ax.set_ylabel(f"accuracy (%) on {curve['n']} images")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


# ---------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------
def fmt_eps(value: float) -> str:
    """8/255 rather than 0.0313725 where the value is a round number of 255ths."""
    k = value * 255
    return f"{round(k, 2):g}/255" if value and abs(k - round(k, 2)) < 1e-6 else f"{value:.4g}"


def _fmt_settings(settings: dict) -> str:
    parts = []
    for k, v in settings.items():
        if k in ("eps", "name", "targeted", "norm", "seed") or v is None:
            continue
        parts.append(f"{k}={fmt_eps(v) if k == 'alpha' else v}")
    return ", ".join(parts)


def render_markdown(report: dict) -> str:
    model, data = report.get("model", {}), report["data"]
    lines = [f"# Robustness report: {model.get('name', 'model')}", ""]
    if model:
        lines.append(f"- model: `{model.get('path')}` (sha256 `{str(model.get('sha256'))[:16]}`), "
                     f"method: {model.get('method') or 'unknown'}")
    subset = f"class-balanced, seed {data['seed']}" if data["class_balanced"] else "all images"
    lines.append(f"- data: {data.get('source', '?')} ({data.get('split', '?')} split), "
                 f"{data['n']} of {data['of']} images ({subset})")
    lines.append(f"- threat model: L-inf, eps = {fmt_eps(report['eps'])} ({report['eps']:.5f})")
    third = sorted({r["implementation"] for r in report["attacks"] if r["attack"] in THIRD_PARTY})
    if any(r["attack"] == "autoattack" for r in report["attacks"]):
        lines.append(f"- AutoAttack: standard suite (APGD-CE, APGD-T, FAB-T, Square) run by {', '.join(third)}")
    env = report.get("environment", {})
    if env:
        lines.append(f"- run: {env.get('date')}, device {env.get('device')}, torch {env.get('torch')}, "
                     f"commit {str(env.get('git_commit'))[:10]}")
    lines += ["", "| attack | implementation | settings | eps | n | accuracy | seconds |", "|---|---|---|---|---|---|---|"]
    c = report["clean"]
    lines.append(f"| clean | - | - | 0 | {c['n']} | {100 * c['accuracy']:.2f}% | {c['seconds']:.1f} |")
    for r in report["attacks"]:
        eps = fmt_eps(r["eps"]) + (" (L2)" if r["norm"] == "l2" else "")
        lines.append(f"| {r['label']} | {r['implementation']} | {_fmt_settings(r['settings'])} | {eps} | {r['n']} "
                     f"| {100 * r['accuracy']:.2f}% | {r['seconds']:.1f} |")
    w = report.get("worst_case")
    if w and w["attacks"]:
        lines.append(f"| **worst case** | - | all of: {', '.join(w['attacks'])} | {fmt_eps(report['eps'])} | {w['n']} "
                     f"| **{100 * w['accuracy']:.2f}%** | - |")
    if report.get("curve"):
        lines += ["", f"Robustness curve ({report['curve']['n']} images): `robustness_curve.png`."]
    if report.get("sanity"):
        lines += ["", "| sanity check (Carlini et al. 2019) | passed | measured |", "|---|---|---|"]
    for check in report.get("sanity", []):
        values = ", ".join(f"{k}={100 * v:.1f}%" for k, v in check["values"].items())
        lines.append(f"| {check['name']} | {'yes' if check['passed'] else '**NO**'} | {values} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="exported artifact (.pt TorchScript / .pt2), training checkpoint or run dir")
    p.add_argument("--data", default="../shared/data/cifar10",
                   help="dataset source (see training.data); default %(default)s")
    p.add_argument("--split", default="test", choices=("train", "test"))
    p.add_argument("--cache-dir", default=None, help="decoded-dataset cache (default $CLEAD_CACHE or ~/.cache/clead)")
    p.add_argument("--attacks", default=DEFAULT_ATTACKS,
                   help=f"comma-separated name[:key=value...], e.g. pgd:steps=50:restarts=5, cw30; "
                        f"names: {', '.join(valid_attack_names())}; default %(default)s")
    p.add_argument("--eps", default="8/255", help="L-inf radius, 8/255 or 0.031 (default %(default)s)")
    p.add_argument("--n", default="1000", help="images: a seeded class-balanced subset, or 'all' (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0, help="subset choice and attack random starts")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--out", required=True, help="output directory for report.json, report.md, robustness_curve.png")
    p.add_argument("--resume", action="store_true", help="reuse attacks already in OUT/report.json with identical settings")
    p.add_argument("--curve-eps", default="0,2,4,8,12,16",
                   help="eps values of the curve, in /255 units (default %(default)s)")
    p.add_argument("--curve-n", type=int, default=200, help="images for the curve (default %(default)s)")
    p.add_argument("--curve-attacks", default=None,
                   help="attacks for the curve (default: the --attacks list minus autoattack and square)")
    p.add_argument("--no-curve", action="store_true", help="skip robustness_curve.png")
    p.add_argument("--sanity", action="store_true", help="also run the sanity checks of training.sanity on --curve-n images")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--update-metadata", action="store_true",
                   help="write the measured accuracies into the artifact's metadata JSON (metrics)")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked but torch.cuda.is_available() is False; use --device cpu or auto")
    return torch.device(name)


def describe_model(path: str | Path, meta: dict) -> dict:
    from training.checkpoint import resolve_checkpoint
    from training.export import sha256_file

    path = Path(path)
    file = path if path.is_file() else resolve_checkpoint(path)
    return {
        "path": str(path),
        "name": meta.get("name") or path.stem,
        "sha256": meta.get("sha256") or sha256_file(file),
        "method": meta.get("method") if isinstance(meta.get("method"), str) else (meta.get("method") or {}).get("name"),
        "format": meta.get("format") or meta.get("source"),
        "classes": meta.get("classes"),
    }


def _environment(device: torch.device) -> dict:
    try:
        git = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=10)
        commit = git.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": name, "torch": torch.__version__,
            "torchattacks": torchattacks_version(), "git_commit": commit, "command": " ".join(sys.argv)}


def run(args: argparse.Namespace) -> int:
    from training.data import load_split
    from training.export import load_model, write_json_atomic

    eps, n, specs = parse_eps(args.eps), parse_n(args.n), parse_attacks(args.attacks)
    curve_specs = parse_attacks(args.curve_attacks) if args.curve_attacks else [s for s in specs if not s.third_party]
    curve_eps = [parse_eps(f"{v.strip()}/255") for v in args.curve_eps.split(",") if v.strip()]
    device = resolve_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    model, meta = load_model(args.model)
    info = describe_model(args.model, meta)
    size = (meta.get("input_size") or [3, 32, 32])[-1]
    data = load_split(args.data, args.split, args.cache_dir, size)
    _check_classes(info.get("classes"), data)
    previous = _previous_report(out / "report.json", info) if args.resume else None
    header = {"model": info, "environment": _environment(device)}
    save = lambda partial: write_json_atomic(out / "report.json", {**header, **partial})  # noqa: E731
    progress = not args.no_progress

    report = evaluate(model, data, specs, eps, n, args.batch_size, device, args.seed, progress, previous, on_update=save)
    report["data"].update(source=args.data, split=args.split)
    if not args.no_curve and curve_specs and curve_eps:
        report["curve"] = robustness_curve(model, data, curve_specs, curve_eps, args.curve_n, args.batch_size,
                                           device, args.seed, progress)
        plot_curve(report["curve"], out / "robustness_curve.png", f"{info['name']}: accuracy vs eps")
    if args.sanity:
        from training.sanity import run_sanity_checks

        subset = data.subset(balanced_subset(data.labels, args.curve_n, args.seed))
        x, y = subset.images.float() / 255, subset.labels
        checks = run_sanity_checks(model, x, y, eps, device=device, batch_size=args.batch_size, seed=args.seed)
        report["sanity"] = [c.as_dict() for c in checks]
    save(report)
    if args.update_metadata:
        record_metrics(Path(args.model), report, header["environment"])
    markdown = render_markdown({**header, **report})
    (out / "report.md").write_text(markdown)
    print(markdown)
    return 0


def record_metrics(artifact: Path, report: dict, environment: dict) -> Path:
    """Merge a report's accuracies into ``<artifact>.json`` under ``metrics``.

    Keys: ``clean_acc``/``clean_n`` (kept from the run that saw the most images, so clean
    accuracy on the whole test split survives a later attack run on a subset), and per attack
    ``<label>_acc`` (``pgd20_acc``, ``autoattack_acc``, ...) with its image count in
    ``attack_n``. The model file, hence its sha256, is untouched.
    """
    from training.export import metadata_path, write_json_atomic

    meta_file = metadata_path(artifact)
    if not artifact.is_file() or not meta_file.is_file():
        raise FileNotFoundError(f"--update-metadata needs an exported artifact with its JSON beside it; {meta_file} is missing")
    meta = json.loads(meta_file.read_text())
    metrics = dict(meta.get("metrics") or {})
    clean = report["clean"]
    if clean["n"] >= int(metrics.get("clean_n") or 0):
        metrics.update(clean_acc=clean["accuracy"], clean_n=clean["n"])
    attack_n = dict(metrics.get("attack_n") or {})
    for entry in report["attacks"]:
        key = re.sub(r"[^a-z0-9]+", "_", entry["label"].lower()).strip("_")
        metrics[f"{key}_acc"] = entry["accuracy"]
        attack_n[key] = entry["n"]
        if entry["attack"] == "autoattack":
            metrics["autoattack_implementation"] = entry["implementation"]
    metrics.update(attack_n=attack_n, n=max(attack_n.values(), default=clean["n"]), eps=report["eps"],
                   split=report["data"].get("split"), evaluated=environment.get("date"),
                   evaluated_commit=environment.get("git_commit"))
    meta["metrics"] = metrics
    write_json_atomic(meta_file, meta)
    return meta_file


def _check_classes(classes: Optional[list], data: ImageSet) -> None:
    if classes is None or not data.classes:
        return
    if len(classes) != len(data.classes):
        raise ValueError(f"the model has {len(classes)} classes but the data has {len(data.classes)}: "
                         "wrong --data or --model?")
    if list(classes) != list(data.classes):
        warnings.warn(f"model classes {classes} differ from the data's {data.classes}; labels are compared by index")


def _previous_report(path: Path, info: dict) -> Optional[dict]:
    if not path.is_file():
        return None
    old = json.loads(path.read_text())
    if old.get("model", {}).get("sha256") != info["sha256"]:
        raise ValueError(f"{path} belongs to another model (sha256 differs); use another --out or drop --resume")
    return old


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="clead-eval", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

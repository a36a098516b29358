"""How well the suspicion score (training/suspicion.py) tells adversarial images from clean ones.

For each augmented artifact, on ``n`` seeded-random *test* images (the score was calibrated on
the training split's hold-out, so the clean flag rate here is an out-of-sample check):

* non-adaptive attacks at ``eps`` (FGSM, PGD-20, APGD-T, from ``training.attacks``) and, when
  given, the adversarial images of a ``clead-serve redteam`` run (black-box Square);
* for each: robust accuracy, ROC AUC of clean vs all adversarial images and vs those that fooled
  the model (the raw score; the calibrated one is a monotone step of it), and the detection
  rate at the documented threshold among adversarial images that fooled the model;
* an adaptive attack (Carlini & Wagner, 2017, "Adversarial examples are not easily detected"):
  PGD-20 on ``CE(logits, y) - w * raw_score``, which knows the detector and pushes the embedding
  towards the prototype of the class it moves to while fooling the head.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.attacks import create_attack
from training.export import load_artifact, write_json_atomic

ATTACK_SPECS = {  # name in the report -> (registry name, settings besides eps)
    "fgsm": ("fgsm", {}),
    "pgd20": ("pgd", {"steps": 20}),
    # One target class, 20 steps: the cost of PGD-20 (the full 9 x 100 does not fit a shared 2-core CPU).
    "apgd-t": ("apgd-t", {"steps": 20, "n_target_classes": 1}),
}


@dataclass
class EvalConfig:
    n: int = 500  # test images per model
    eps: float = 8 / 255  # L-inf radius in [0, 1] pixel units
    attacks: tuple[str, ...] = ("fgsm", "pgd20", "apgd-t")
    adaptive_weights: tuple[float, ...] = (1.0, 10.0)  # w in CE - w * raw score
    adaptive_steps: int = 20
    seed: int = 0
    threads: int = 2
    batch_size: int = 100


def roc_auc(negatives: torch.Tensor, positives: torch.Tensor) -> float | None:
    """Mann-Whitney ROC AUC, ties counted half: P(positive scores higher than negative)."""
    neg, pos = negatives.double().flatten(), positives.double().flatten()
    if not len(neg) or not len(pos):
        return None
    greater = (pos[:, None] > neg[None]).double().sum() + 0.5 * (pos[:, None] == neg[None]).double().sum()
    return float(greater / (len(pos) * len(neg)))


class Scored(nn.Module):
    """The artifact as attacks see it: ``forward`` -> logits; ``score`` -> (logits, raw, calibrated)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        if not hasattr(module, "suspicion"):
            raise ValueError("artifact has no suspicion method; run `clead-train suspicion augment` first")
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)

    def score(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.module.suspicion(x)


def adaptive_objective(weight: float):
    """Maximised by the attack: fool the head (CE up) while keeping the raw score down."""

    def objective(model: Scored, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits, raw, _ = model.score(x)
        return F.cross_entropy(logits, y, reduction="none") - weight * raw

    return objective


@torch.no_grad()
def scores_of(model: Scored, x: torch.Tensor, batch_size: int) -> dict[str, torch.Tensor]:
    preds, raws, cals = [], [], []
    for s in range(0, len(x), batch_size):
        logits, raw, cal = model.score(x[s:s + batch_size])
        preds.append(logits.argmax(1))
        raws.append(raw)
        cals.append(cal)
    return {"pred": torch.cat(preds), "raw": torch.cat(raws), "cal": torch.cat(cals)}


def attack_images(model: Scored, attack, x: torch.Tensor, y: torch.Tensor, batch_size: int, objective=None):
    return torch.cat([attack(model, x[s:s + batch_size], y[s:s + batch_size], objective=objective)
                      for s in range(0, len(x), batch_size)])


def detection_row(clean: Mapping[str, torch.Tensor], adv: Mapping[str, torch.Tensor], y: torch.Tensor,
                  threshold: float, seconds: float) -> dict[str, Any]:
    fooled = (clean["pred"] == y) & (adv["pred"] != y)
    flagged = adv["cal"] > threshold
    return {
        "robust_acc": round(float((adv["pred"] == y).float().mean()), 4),
        "fooled": int(fooled.sum()),
        "roc_auc": roc_auc(clean["raw"], adv["raw"]),
        "roc_auc_fooled": roc_auc(clean["raw"], adv["raw"][fooled]),
        "detection_rate_fooled": round(float(flagged[fooled].float().mean()), 4) if bool(fooled.any()) else None,
        "flagged_rate": round(float(flagged.float().mean()), 4),
        "seconds": round(seconds, 1),
    }


def evaluate_model(artifact: Path, x: torch.Tensor, y: torch.Tensor, config: EvalConfig,
                   redteam_dir: str | None = None) -> dict[str, Any]:
    module, meta = load_artifact(artifact)
    model = Scored(module).eval()
    threshold = float(meta["suspicion"]["threshold"])
    clean = scores_of(model, x, config.batch_size)
    result: dict[str, Any] = {
        "artifact": str(artifact), "sha256": meta["sha256"], "threshold": threshold, "n": len(x),
        "calibration_images": meta["suspicion"].get("calibration_images"),
        "prototype_images": meta["suspicion"].get("prototype_images"),
        "clean_acc": round(float((clean["pred"] == y).float().mean()), 4),
        "clean_flagged_rate": round(float((clean["cal"] > threshold).float().mean()), 4),
        "attacks": {}, "adaptive": {},
    }
    for name in config.attacks:
        registry_name, settings = ATTACK_SPECS[name]
        start = time.perf_counter()
        adv_x = attack_images(model, create_attack(registry_name, eps=config.eps, **settings), x, y, config.batch_size)
        adv = scores_of(model, adv_x, config.batch_size)
        result["attacks"][name] = detection_row(clean, adv, y, threshold, time.perf_counter() - start)
        print(f"  {artifact.stem} {name}: {result['attacks'][name]}", flush=True)
    for weight in config.adaptive_weights:
        start = time.perf_counter()
        attack = create_attack("pgd", eps=config.eps, steps=config.adaptive_steps)
        adv_x = attack_images(model, attack, x, y, config.batch_size, objective=adaptive_objective(weight))
        adv = scores_of(model, adv_x, config.batch_size)
        result["adaptive"][f"pgd{config.adaptive_steps}-w{weight:g}"] = detection_row(
            clean, adv, y, threshold, time.perf_counter() - start)
        print(f"  {artifact.stem} adaptive w={weight:g}: {result['adaptive'][f'pgd{config.adaptive_steps}-w{weight:g}']}",
              flush=True)
    if redteam_dir:
        result["attacks"]["redteam-square"] = redteam_row(model, Path(redteam_dir), threshold, config.batch_size)
    return result


def redteam_row(model: Scored, run_dir: Path, threshold: float, batch_size: int) -> dict[str, Any]:
    """The black-box run's own clean and final adversarial 8-bit images, scored locally."""
    saved = np.load(run_dir / "adversarial.npz")
    report = json.loads((run_dir / "report.json").read_text())
    clean_x = torch.from_numpy(saved["clean"]).float() / 255
    adv_x = torch.from_numpy(saved["adv"]).float() / 255
    y = torch.from_numpy(saved["labels"]).long()
    row = detection_row(scores_of(model, clean_x, batch_size), scores_of(model, adv_x, batch_size), y, threshold,
                        report.get("wall_seconds", 0.0))
    row.update(n=len(y), queries=report["config"]["queries"], run=str(run_dir))
    return row


def load_test_subset(data: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    from training.data import load_split

    test = load_split(data, "test")
    idx = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return test.images[idx][:, :3].float() / 255, test.labels[idx]


def evaluate_models(artifacts: Sequence[Path], data: str, config: EvalConfig,
                    redteam: Mapping[str, str] | None = None) -> dict[str, Any]:
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    x, y = load_test_subset(data, config.n, config.seed)
    redteam = redteam or {}
    models = {}
    for artifact in artifacts:
        models[artifact.stem] = evaluate_model(Path(artifact), x, y, config, redteam.get(artifact.stem))
    return {"config": asdict(config), "split": "test", "models": models}


def _fmt(v: Any, digits: int = 3) -> str:
    return "n/a" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def _sample_sizes(models: Mapping[str, Any]) -> str:
    """"Validation / prototype images: clead 2,000 / 5,000; ..." from each model's augmented metadata."""
    def count(v: Any) -> str:
        return f"{v:,}" if isinstance(v, int) else "not recorded"

    sizes = [f"{name} {count(r.get('calibration_images'))} / {count(r.get('prototype_images'))}" for name, r in models.items()]
    return f"Validation / prototype images: {'; '.join(sizes)}." if sizes else ""


def markdown(results: Mapping[str, Any], command: str = "") -> str:
    cfg = results["config"]
    lines = [
        "## Suspicion score: does it flag adversarial images?", "",
        "Each answer of an augmented artifact carries `suspicion` in [0, 1]: the share of clean validation "
        "images (the hold-out of the model's training run) whose embedding lies closer to the prototype of "
        "its predicted class than this image's does (cosine distance of the penultimate features from the mean "
        "unit-normalised features of that class's training images). `flagged` is `suspicion > 0.95`, "
        f"which flags 5% of clean validation images by construction. {_sample_sizes(results['models'])}", "",
        f"Test split, n = {cfg['n']} images (seed {cfg['seed']}), L-inf eps = {cfg['eps'] * 255:.0f}/255. "
        "ROC AUC: clean vs adversarial images on the raw score (0.5 = chance); *fooled*: only the adversarial "
        "images that changed a correct prediction; detection: flagged share of those.", "",
        "| model | attack | robust acc | ROC AUC (all) | ROC AUC (fooled) | detection rate (fooled) | fooled |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results["models"].items():
        lines.append(f"| {name} | none (clean) | {r['clean_acc']:.3f} (clean acc) | | | "
                     f"{r['clean_flagged_rate']:.3f} (clean flagged) | |")
        rows = list(r["attacks"].items()) + [(f"**adaptive** {k}", v) for k, v in r["adaptive"].items()]
        for attack, a in rows:
            lines.append(f"| {name} | {attack} | {a['robust_acc']:.3f} | {_fmt(a['roc_auc'])} | "
                         f"{_fmt(a['roc_auc_fooled'])} | {_fmt(a['detection_rate_fooled'])} | {a['fooled']} |")
    lines += ["", *verdicts(results), "", "APGD-T here is the project's APGD-T with 20 steps and 1 target class (a reduced budget to "
              "fit the CPU); PGD-20 is the registry's `pgd` with 20 steps. The adaptive attack is PGD-20 on "
              "`CE - w * raw score` (Carlini & Wagner 2017); redteam-square rows score the final 8-bit images "
              "of a `clead-serve redteam` run (its own images and n).", ""]
    if command:
        lines += ["Command:", "", f"    {command}", ""]
    return "\n".join(lines)


TARGET_AUC = 0.90  # issue #15: against non-adaptive PGD-20 on the hardened model


def verdicts(results: Mapping[str, Any]) -> list[str]:
    """One line per model: the PGD-20 target, and whether the adaptive attack evades the flag."""
    lines = []
    for name, r in results["models"].items():
        pgd = r["attacks"].get("pgd20")
        parts = []
        if pgd and pgd["roc_auc"] is not None:
            met = "met" if pgd["roc_auc"] >= TARGET_AUC else "**missed**"
            parts.append(f"ROC AUC against PGD-20 {pgd['roc_auc']:.3f} (target >= {TARGET_AUC:.2f}: {met})")
        for key, a in r["adaptive"].items():
            rate = a["detection_rate_fooled"]
            if rate is None:
                continue
            evaded = rate <= r["clean_flagged_rate"]
            parts.append(f"adaptive {key}: detection {rate:.3f} among {a['fooled']} fooled, ROC AUC "
                         f"{_fmt(a['roc_auc'])}" + (" - **evaded** (flagged no more often than clean images, "
                                                    f"{r['clean_flagged_rate']:.3f})" if evaded else ""))
        if parts:
            lines.append(f"* **{name}**: " + "; ".join(parts) + ".")
    return lines


def write_outputs(results: Mapping[str, Any], config: EvalConfig, out: Path, md_path: Path, command: str = "") -> None:
    """``out/<model>.json`` per model, merged with an earlier run's rows (new rows win), and the
    markdown of every model in ``out`` (so models and the red-team rows can be run separately)."""
    out.mkdir(parents=True, exist_ok=True)
    for name, result in results["models"].items():
        path = out / f"{name}.json"
        merged = dict(result)
        if path.is_file():
            old = json.loads(path.read_text())
            if old.get("n") == result["n"] and old.get("sha256") == result["sha256"]:
                merged["attacks"] = {**old.get("attacks", {}), **result["attacks"]}
                merged["adaptive"] = {**old.get("adaptive", {}), **result["adaptive"]}
                merged["commands"] = old.get("commands", []) + [command]
            else:
                merged["commands"] = [command]
        else:
            merged["commands"] = [command]
        merged["config"] = results["config"]
        write_json_atomic(path, merged)
    models = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))}
    commands = [c for m in models.values() for c in m.get("commands", [])]
    text = markdown({"config": results["config"], "models": models}, "\n    ".join(dict.fromkeys(commands)))
    (out / "suspicion.md").write_text(text)
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(text)

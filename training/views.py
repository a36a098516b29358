"""``clead-train views``: adversarial views of the train split, generated once, offline.

The control run ``clead-fixed`` trains C-LEAD's objective on views made this way, as the
authors' released code appears to do, instead of by an inner maximisation against the model
being trained. The views attack a given model (by default the shipped standard model) with
PGD at the training eps, on the un-augmented images; training then crops and flips each image
together with its view.

Views are stored as uint8 like the images they perturb: for an L-inf radius of k/255, rounding
``x + delta`` to the nearest integer pixel keeps ``|view - x| <= k/255`` exactly, because ``x``
is an integer pixel itself. The file also records the attack, the source model's sha256 and
the source model's clean and adversarial accuracy on the views.

    clead-train views --model models/cifar10/baseline.pt --data ../shared/data/cifar10 \\
        --out runs/views-baseline.pt --steps 10 --eps 8/255
    clead-train fit --method clead-fixed --fixed-views runs/views-baseline.pt ...
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from tqdm import tqdm

from training.config import AttackConfig
from training.export import sha256_file
from training.methods import inner_attack


def make_views(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, attack_cfg: AttackConfig,
               batch_size: int = 512, device: str | torch.device = "cpu", seed: int = 0,
               progress: bool = False) -> tuple[torch.Tensor, dict[str, float]]:
    """Views of uint8 ``images`` against ``model`` by the training-time attack of ``attack_cfg``
    (FGSM-RS for 1 step, else PGD; L-inf); returns (uint8 views, accuracies)."""
    device = torch.device(device)
    model = model.to(device).eval()
    attack = inner_attack(attack_cfg)
    torch.manual_seed(seed)
    views = torch.empty_like(images)
    clean = robust = 0
    bar = tqdm(range(0, len(labels), batch_size), desc="views", disable=not progress, dynamic_ncols=True)
    for start in bar:
        x = images[start : start + batch_size].to(device).float().div_(255)
        y = labels[start : start + batch_size].to(device)
        x_adv = attack(model, x, y)
        view = (x_adv * 255).round_().clamp_(0, 255).to(torch.uint8)
        views[start : start + batch_size] = view.cpu()
        with torch.no_grad():
            clean += int((model(x).argmax(1) == y).sum())
            robust += int((model(view.float().div_(255)).argmax(1) == y).sum())
    n = max(len(labels), 1)
    return views, {"clean_acc": clean / n, "views_acc": robust / n}


def views_file(model: torch.nn.Module, meta: dict, source: Path, data_path: str, images: torch.Tensor,
               labels: torch.Tensor, attack_cfg: AttackConfig, batch_size: int = 512,
               device: str | torch.device = "cpu", seed: int = 0, progress: bool = False) -> dict:
    """The contents of a views file: the views of ``images`` against ``model`` (loaded from
    ``source``), what made them, and the source model's accuracy on them."""
    start = time.perf_counter()
    views, accuracy = make_views(model, images, labels, attack_cfg, batch_size, device, seed, progress)
    return {
        "images": views,
        "labels": labels.clone(),
        "eps": attack_cfg.eps,
        "steps": attack_cfg.steps,
        "alpha": attack_cfg.step_size(),
        "seed": seed,
        "source_model": str(source),
        "source_sha256": sha256_file(source) if source.is_file() else "",
        "source_name": str(meta.get("name", source.stem)),
        "data": data_path,
        "seconds": time.perf_counter() - start,
        **accuracy,
    }


def save_views(blob: dict, out: Path) -> None:
    """Write ``blob`` to ``out`` atomically (a half-written file is never read as views)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".{os.getpid()}.tmp")
    torch.save(blob, tmp)
    os.replace(tmp, out)

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

import argparse
import os
import time
from pathlib import Path

import torch
from tqdm import tqdm

from training.config import AttackConfig, parse_eps
from training.data import load_split
from training.evaluation_cli import resolve_device
from training.export import load_model, sha256_file
from training.methods import inner_attack


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="the model to attack: an exported artifact, a checkpoint or a run directory")
    p.add_argument("--data", default="../shared/data/cifar10", help="dataset (see training.data; default %(default)s)")
    p.add_argument("--cache-dir", default=None, help="decoded-dataset cache (default $CLEAD_CACHE or ~/.cache/clead)")
    p.add_argument("--out", required=True, help="output file (.pt), for clead-train fit --fixed-views")
    p.add_argument("--eps", default="8/255", help="L-inf radius (default %(default)s)")
    p.add_argument("--steps", type=int, default=10, help="PGD steps (1 = FGSM with random start; default %(default)s)")
    p.add_argument("--alpha", default=None, help="step size (default 2.5*eps/steps, 1.25*eps for 1 step)")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--seed", type=int, default=0, help="random starts")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--no-progress", action="store_true")


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


def run(args: argparse.Namespace) -> int:
    eps = parse_eps(args.eps)
    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    if not 0 < eps <= 1:
        raise ValueError(f"--eps must be in (0, 1] (pixel units: 8/255), got {args.eps}")
    attack_cfg = AttackConfig(eps=eps, steps=args.steps, alpha=parse_eps(args.alpha) if args.alpha else None)
    model, meta = load_model(args.model)
    data = load_split(args.data, "train", args.cache_dir)
    start = time.perf_counter()
    views, accuracy = make_views(model, data.images, data.labels, attack_cfg, args.batch_size,
                                 resolve_device(args.device), args.seed, progress=not args.no_progress)
    source = Path(args.model)
    blob = {
        "images": views,
        "labels": data.labels.clone(),
        "eps": eps,
        "steps": args.steps,
        "alpha": attack_cfg.step_size(),
        "seed": args.seed,
        "source_model": str(source),
        "source_sha256": sha256_file(source) if source.is_file() else "",
        "source_name": str(meta.get("name", source.stem)),
        "data": args.data,
        "seconds": time.perf_counter() - start,
        **accuracy,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".{os.getpid()}.tmp")
    torch.save(blob, tmp)
    os.replace(tmp, out)
    print(f"{out}: {len(views)} views, eps {eps:.5f}, {args.steps} steps; source model accuracy "
          f"clean {100 * accuracy['clean_acc']:.1f}%, on the views {100 * accuracy['views_acc']:.1f}% "
          f"({blob['seconds']:.0f} s)")
    return 0

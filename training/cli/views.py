"""``clead-train views``: the command line of ``training.views`` (adversarial views of the
train split, made once, for ``--method clead-fixed``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from training.cli.common import resolve_device
from training.config import AttackConfig, parse_eps
from training.data import DEFAULT_DATA_PATH, load_split
from training.export import load_model
from training.views import save_views, views_file


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="the model to attack: an exported artifact, a checkpoint or a run directory")
    p.add_argument("--data", default=DEFAULT_DATA_PATH, help="dataset (see training.data; default %(default)s)")
    p.add_argument("--cache-dir", default=None, help="decoded-dataset cache (default $CLEAD_CACHE or ~/.cache/clead)")
    p.add_argument("--out", required=True, help="output file (.pt), for clead-train fit --fixed-views")
    p.add_argument("--eps", default="8/255", help="L-inf radius (default %(default)s)")
    p.add_argument("--steps", type=int, default=10, help="PGD steps (1 = FGSM with random start; default %(default)s)")
    p.add_argument("--alpha", default=None, help="step size (default 2.5*eps/steps, 1.25*eps for 1 step)")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--seed", type=int, default=0, help="random starts")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    eps = parse_eps(args.eps)
    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    if not 0 < eps <= 1:
        raise ValueError(f"--eps must be in (0, 1] (pixel units: 8/255), got {args.eps}")
    attack_cfg = AttackConfig(eps=eps, steps=args.steps, alpha=parse_eps(args.alpha) if args.alpha else None)
    model, meta = load_model(args.model)
    data = load_split(args.data, "train", args.cache_dir)
    blob = views_file(model, meta, Path(args.model), args.data, data.images, data.labels, attack_cfg, args.batch_size,
                      resolve_device(args.device), args.seed, progress=not args.no_progress)
    out = Path(args.out)
    save_views(blob, out)
    print(f"{out}: {len(blob['images'])} views, eps {eps:.5f}, {args.steps} steps; source model accuracy "
          f"clean {100 * blob['clean_acc']:.1f}%, on the views {100 * blob['views_acc']:.1f}% "
          f"({blob['seconds']:.0f} s)")
    return 0

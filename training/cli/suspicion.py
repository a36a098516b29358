"""``clead-train suspicion``: add the suspicion score to artifacts, and evaluate it.

    augment   compute prototypes (training images) and calibration (validation hold-out) for an
              exported TorchScript artifact and write it back with the ``suspicion`` method
    eval      ROC AUC of clean vs adversarial test images, detection rate, adaptive attack
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from training.config import parse_eps
from training.data import DEFAULT_DATA_PATH
from training.suspicion import SuspicionConfig
from training.suspicion_eval import EvalConfig

PROG = "clead-train suspicion"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``augment`` and ``eval``; every default is the one of ``SuspicionConfig``/``EvalConfig``."""
    sub = p.add_subparsers(dest="suspicion_command", required=True)
    s, e = SuspicionConfig(), EvalConfig()
    aug = sub.add_parser("augment", help="write an artifact with the suspicion method (in place by default)")
    aug.add_argument("artifacts", nargs="+", type=Path)
    aug.add_argument("--out-dir", type=Path, default=None, help="default: overwrite each artifact and its json")
    aug.add_argument("--data", default=DEFAULT_DATA_PATH, help="dataset (default %(default)s)")
    aug.add_argument("--prototype-images", type=int, default=s.prototype_images, help="default %(default)s")
    aug.add_argument("--val-size", type=int, default=s.val_size, help="the training run's validation hold-out")
    aug.add_argument("--split-seed", type=int, default=s.split_seed)
    aug.add_argument("--rate", type=float, default=s.rate, help="share of clean validation images flagged")
    aug.set_defaults(suspicion_run=cmd_augment)

    ev = sub.add_parser("eval", help="how well the score separates clean from adversarial test images")
    ev.add_argument("artifacts", nargs="+", type=Path, help="augmented artifacts (e.g. models/cifar10/*.pt)")
    ev.add_argument("--data", default=DEFAULT_DATA_PATH, help="dataset (default %(default)s)")
    ev.add_argument("--n", type=int, default=e.n, help="test images per model (default %(default)s)")
    ev.add_argument("--eps", default="8/255", help="L-inf radius (default %(default)s)")
    ev.add_argument("--attacks", default=",".join(e.attacks), help="comma list of fgsm, pgd20, apgd-t")
    ev.add_argument("--adaptive-weights", default=",".join(f"{w:g}" for w in e.adaptive_weights),
                    help="weights of the score in the adaptive PGD-20 objective (CE - w * raw score)")
    ev.add_argument("--redteam", action="append", default=[], metavar="NAME=RUN_DIR",
                    help="include a clead-serve redteam run's adversarial images for model NAME (repeatable)")
    ev.add_argument("--seed", type=int, default=e.seed)
    ev.add_argument("--threads", type=int, default=e.threads)
    ev.add_argument("--out", type=Path, default=Path("runs/suspicion-eval"))
    ev.add_argument("--markdown", type=Path, default=Path("docs/suspicion.md"))
    ev.set_defaults(suspicion_run=cmd_eval)


def run(args: argparse.Namespace) -> int:
    return args.suspicion_run(args) or 0


def main(argv: list[str] | None = None) -> int:
    """The same commands as ``clead-train suspicion`` (kept for ``python -m training.cli.suspicion``)."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    args.argv = ["suspicion", *(sys.argv[1:] if argv is None else argv)]
    try:
        return run(args)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        print(f"{PROG} {args.suspicion_command}: error: {exc}", file=sys.stderr)
        return 1


def cmd_augment(args: argparse.Namespace) -> int:
    import torch

    from training.data import load_split, train_val_split
    from training.suspicion import augment_artifact

    config = SuspicionConfig(prototype_images=args.prototype_images, val_size=args.val_size,
                             split_seed=args.split_seed, rate=args.rate)
    train, val = train_val_split(load_split(args.data, "train"), config.val_size, config.split_seed)
    g = torch.Generator().manual_seed(config.seed)
    protos = train.subset(torch.randperm(len(train), generator=g)[: config.prototype_images].sort().values)
    for artifact in args.artifacts:
        out = (args.out_dir / artifact.name) if args.out_dir else artifact
        start = time.perf_counter()
        augment_artifact(artifact, out, protos.images[:, :3], protos.labels, val.images[:, :3], config)
        meta = json.loads(out.with_suffix(".json").read_text())
        print(f"{out}: suspicion threshold {meta['suspicion']['threshold']}, sha256 {meta['sha256'][:12]}..., "
              f"{out.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - start:.0f} s")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from training.suspicion_eval import evaluate_models, write_outputs

    config = EvalConfig(n=args.n, eps=parse_eps(args.eps), attacks=tuple(a for a in args.attacks.split(",") if a),
                        adaptive_weights=tuple(float(w) for w in args.adaptive_weights.split(",") if w),
                        seed=args.seed, threads=args.threads)
    redteam = dict(spec.split("=", 1) for spec in args.redteam)
    results = evaluate_models(args.artifacts, args.data, config, redteam)
    command = "clead-train " + shlex.join(getattr(args, "argv", sys.argv[1:]))
    write_outputs(results, config, args.out, args.markdown, command=command)
    print(args.markdown.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

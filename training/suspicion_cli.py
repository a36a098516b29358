"""``python -m training.suspicion_cli``: add the suspicion score to artifacts, and evaluate it.

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

DEFAULT_DATA = "../shared/data/cifar10"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.suspicion_cli", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    aug = sub.add_parser("augment", help="write an artifact with the suspicion method (in place by default)")
    aug.add_argument("artifacts", nargs="+", type=Path)
    aug.add_argument("--out-dir", type=Path, default=None, help="default: overwrite each artifact and its json")
    aug.add_argument("--data", default=DEFAULT_DATA)
    aug.add_argument("--prototype-images", type=int, default=5000)
    aug.add_argument("--val-size", type=int, default=1000, help="the training run's validation hold-out")
    aug.add_argument("--split-seed", type=int, default=0)
    aug.add_argument("--rate", type=float, default=0.05, help="share of clean validation images flagged")
    aug.set_defaults(func=cmd_augment)

    ev = sub.add_parser("eval", help="how well the score separates clean from adversarial test images")
    ev.add_argument("artifacts", nargs="+", type=Path, help="augmented artifacts (e.g. models/cifar10/*.pt)")
    ev.add_argument("--data", default=DEFAULT_DATA)
    ev.add_argument("--n", type=int, default=500, help="test images per model")
    ev.add_argument("--eps", default="8/255")
    ev.add_argument("--attacks", default="fgsm,pgd20,apgd-t", help="comma list of fgsm, pgd20, apgd-t")
    ev.add_argument("--adaptive-weights", default="1,10",
                    help="weights of the score in the adaptive PGD-20 objective (CE - w * raw score)")
    ev.add_argument("--redteam", action="append", default=[], metavar="NAME=RUN_DIR",
                    help="include a clead-serve redteam run's adversarial images for model NAME (repeatable)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--threads", type=int, default=2)
    ev.add_argument("--out", type=Path, default=Path("runs/suspicion-eval"))
    ev.add_argument("--markdown", type=Path, default=Path("docs/suspicion.md"))
    ev.set_defaults(func=cmd_eval)
    args = parser.parse_args(argv)
    try:
        return (args.func(args, argv) if args.func is cmd_eval else args.func(args)) or 0
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        print(f"suspicion {args.command}: error: {exc}", file=sys.stderr)
        return 1


def parse_eps(text: str) -> float:
    num, sep, den = str(text).partition("/")
    return float(num) / float(den) if sep else float(num)


def cmd_augment(args: argparse.Namespace) -> int:
    import torch

    from training.data import load_split, train_val_split
    from training.suspicion import SuspicionConfig, augment_artifact

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


def cmd_eval(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    from training.suspicion_eval import EvalConfig, evaluate_models, write_outputs

    config = EvalConfig(n=args.n, eps=parse_eps(args.eps), attacks=tuple(a for a in args.attacks.split(",") if a),
                        adaptive_weights=tuple(float(w) for w in args.adaptive_weights.split(",") if w),
                        seed=args.seed, threads=args.threads)
    redteam = dict(spec.split("=", 1) for spec in args.redteam)
    results = evaluate_models(args.artifacts, args.data, config, redteam)
    command = "python -m training.suspicion_cli " + shlex.join(sys.argv[1:] if argv is None else argv)
    write_outputs(results, config, args.out, args.markdown, command=command)
    print(args.markdown.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

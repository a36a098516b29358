"""What `clead-train eval --workers N` buys: the same evaluation (same artifact, attacks,
images, batches and channels_last layout) timed with one process using every torch thread and
with N forked processes sharing them, and whether the two gave the same per-image results.

    python -m benchmarks.eval_workers                                   # models/cifar10/clead.pt
    python -m benchmarks.eval_workers --model runs/x/model.pt --n 200 --attacks apgd-ce,square:queries=1000

The default attacks are two of AutoAttack's four stages at full strength (APGD-CE, 100 steps:
gradients; Square, 5,000 queries: forward passes only) on 100 test images, so that it finishes
in minutes on a 2-core CPU; AutoAttack itself is made of these passes.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

from training.data import load_split
from training.evaluation import evaluate, optimize_for_attack

DEFAULT_ATTACKS = "apgd-ce,square"


def measure(path: str, data_root: str, attacks: str, n: int, batch_size: int, workers: int,
            channels_last: bool = True) -> dict[int, dict]:
    """Per worker count (1 and ``workers``): seconds of each attack and the per-image masks."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
        model = torch.jit.load(path)
    data = load_split(data_root, "test")
    model, _ = optimize_for_attack(model, data.images[:16].float() / 255, channels_last=channels_last)
    results = {}
    for count in (1, workers):
        start = time.perf_counter()
        report = evaluate(model, data, attacks, n=n, batch_size=batch_size, progress=False, workers=count)
        results[count] = {"seconds": time.perf_counter() - start,
                          "attacks": {r["label"]: (r["seconds"], r["robust_mask"]) for r in report["attacks"]}}
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="models/cifar10/clead.pt", help="a TorchScript artifact")
    p.add_argument("--data", default="../shared/data/cifar10")
    p.add_argument("--attacks", default=DEFAULT_ATTACKS)
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=50, help="batches are the unit a worker takes")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    result = measure(args.model, args.data, args.attacks, args.n, args.batch_size, args.workers)
    one, many = result[1], result[args.workers]
    print(f"{args.model}: {args.n} images, batches of {args.batch_size}, channels_last, {torch.get_num_threads()} "
          f"threads: 1 process of {torch.get_num_threads()} against {args.workers} of "
          f"{max(1, torch.get_num_threads() // args.workers)}")
    print(f"| attack | 1 process s | {args.workers} workers s | speed-up | same per-image results |\n|---|---|---|---|---|")
    for label, (seconds, mask) in one["attacks"].items():
        other_seconds, other_mask = many["attacks"][label]
        print(f"| {label} | {seconds:.1f} | {other_seconds:.1f} | {seconds / other_seconds:.2f}x "
              f"| {'yes' if mask == other_mask else 'no'} |")
    print(f"| all | {one['seconds']:.1f} | {many['seconds']:.1f} | {one['seconds'] / many['seconds']:.2f}x | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What `clead-train eval --freeze` and `--channels-last` buy: the cost of the passes every
attack is made of (a forward, and a forward plus backward to the input) for each way of
running the same artifact, measured in interleaved rounds so that drift on a shared machine
hits every variant alike.

    python -m benchmarks.eval_layouts                               # models/cifar10/clead.pt, 100 images
    python -m benchmarks.eval_layouts --model runs/x/model.pt --batch 250 --rounds 9 --threads 1

Every variant is built by ``training.evaluation.optimize_for_attack``, which refuses one whose
logits differ from the artifact's, so the table compares the same function computed four ways.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from training.evaluation import optimize_for_attack

VARIANTS = {"plain": {}, "frozen": {"freeze": True}, "channels_last": {"channels_last": True},
            "frozen + channels_last": {"freeze": True, "channels_last": True}}


def _forward_backward(model: torch.nn.Module, x: torch.Tensor) -> float:
    x = x.clone().requires_grad_(True)
    start = time.perf_counter()
    torch.autograd.grad(model(x).logsumexp(1).sum(), x)
    return time.perf_counter() - start


@torch.no_grad()
def _forward(model: torch.nn.Module, x: torch.Tensor) -> float:
    start = time.perf_counter()
    model(x)
    return time.perf_counter() - start


def measure(path: str, batch: int, rounds: int, warmup: int = 3) -> dict[str, dict[str, float]]:
    """Median seconds per pass over ``rounds`` interleaved rounds, per variant."""
    torch.manual_seed(0)
    x = torch.rand(batch, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
        models = {name: optimize_for_attack(torch.jit.load(path), x[:16], **kw)[0] for name, kw in VARIANTS.items()}
    for model in models.values():  # TorchScript specialises its graph over the first calls
        for _ in range(warmup):
            _forward_backward(model, x), _forward(model, x)
    times = {name: {"fwd+bwd": [], "fwd": []} for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            times[name]["fwd+bwd"].append(_forward_backward(model, x))
            times[name]["fwd"].append(_forward(model, x))
    return {name: {k: statistics.median(v) for k, v in t.items()} for name, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="models/cifar10/clead.pt", help="a TorchScript artifact")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = measure(args.model, args.batch, args.rounds)
    base = result["plain"]
    print(f"{args.model}: {args.batch} images, {torch.get_num_threads()} threads, median of {args.rounds} rounds")
    print("| variant | fwd+bwd s | speed-up | fwd s | speed-up |\n|---|---|---|---|---|")
    for name, r in result.items():
        print(f"| {name} | {r['fwd+bwd']:.3f} | {base['fwd+bwd'] / r['fwd+bwd']:.2f}x | {r['fwd']:.3f} "
              f"| {base['fwd'] / r['fwd']:.2f}x |")


if __name__ == "__main__":
    main()

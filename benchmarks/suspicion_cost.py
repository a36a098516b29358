"""Extra cost of the suspicion score per forward pass, as the server runs it.

    python -m benchmarks.suspicion_cost [--artifact models/cifar10/clead.pt] [--rounds 200]

Interleaves ``Predictor.forward`` and ``Predictor.forward_scored`` (frozen, channels_last,
one thread) round by round, so a busy shared CPU slows both alike, and prints the medians.
(pytest-benchmark, in bench_suspicion.py, times one variant after the other instead.)
"""

from __future__ import annotations

import argparse
import statistics
import time


def main(argv: list[str] | None = None) -> int:
    import torch

    from serving.predictor import Predictor

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", default="models/cifar10/clead.pt")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    predictor = Predictor.from_artifact(args.artifact)
    for batch in args.batches:
        x = torch.rand(batch, 3, 32, 32)
        plain, scored = [], []
        for _ in range(5):
            predictor.forward(x)
            predictor.forward_scored(x)
        for _ in range(args.rounds):
            start = time.perf_counter()
            predictor.forward(x)
            plain.append(time.perf_counter() - start)
            start = time.perf_counter()
            predictor.forward_scored(x)
            scored.append(time.perf_counter() - start)
        a, b = statistics.median(plain), statistics.median(scored)
        print(f"batch {batch}: forward {a * 1e3:.3f} ms, forward + suspicion {b * 1e3:.3f} ms, "
              f"overhead {100 * (b - a) / a:+.1f}% (median of {args.rounds} interleaved rounds, 1 thread)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What ``clead-train fit --channels-last`` buys on this machine: one training step's forward
and backward (weights included) of PreAct ResNet-18, NCHW against channels_last, measured in
interleaved rounds so that drift on a shared machine hits both layouts alike.

    python -m benchmarks.train_layouts                          # widths 0.25 and 0.5, batch 128
    python -m benchmarks.train_layouts --threads 1 & python -m benchmarks.train_layouts --threads 1
                                                                # two one-thread jobs side by side

The second line is how ``docs/screen.yaml`` chose two one-thread jobs over one two-thread job:
compare each side-by-side time with half the two-thread one.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from training.models import create_model


def step_seconds(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Forward, loss and backward of one batch (an SGD step's cost without the update)."""
    start = time.perf_counter()
    F.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def measure(width: float, batch: int, rounds: int) -> dict[str, float]:
    """Median seconds per step for each layout (after one warm-up step each)."""
    torch.manual_seed(0)
    x, y = torch.rand(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    nchw = create_model("preact_resnet18", width=width).train()
    nhwc = create_model("preact_resnet18", width=width).train().to(memory_format=torch.channels_last)
    nhwc.load_state_dict(nchw.state_dict())
    x_nhwc = x.contiguous(memory_format=torch.channels_last)
    runs = {"NCHW": (nchw, x), "channels_last": (nhwc, x_nhwc)}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for name, (model, inputs) in runs.items():
        step_seconds(model, inputs, y)  # warm-up
    for _ in range(rounds):
        for name, (model, inputs) in runs.items():
            times[name].append(step_seconds(model, inputs, y))
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.train_layouts", description=__doc__.splitlines()[0])
    p.add_argument("--widths", default="0.25,0.5", help="PreAct ResNet-18 widths (default %(default)s)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"median of {args.rounds} rounds; forward + backward per step")
    print("| width | NCHW ms | channels_last ms | channels_last saves |\n|---|---|---|---|")
    for width in (float(w) for w in args.widths.split(",")):
        t = measure(width, args.batch, args.rounds)
        print(f"| {width:g} | {1000 * t['NCHW']:.0f} | {1000 * t['channels_last']:.0f} | "
              f"{100 * (1 - t['channels_last'] / t['NCHW']):.0f}% |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Where AutoAttack's time goes: each stage of the standard suite (and the project's own APGD)
timed on the same correctly classified test images, with the model's forward passes counted,
against the cost of those passes alone.

    python -m benchmarks.autoattack_cost                                   # models/cifar10/clead.pt
    python -m benchmarks.autoattack_cost --model runs/x/model.pt --report runs/eval-x/report.json

For each stage the table gives the image-passes it made with gradients (forward and backward to
the input) and without (forward only), and ``overhead``: its seconds over what those passes
cost on their own (a bare forward, and forward + backward, timed at the same batch size). An
overhead near 1.0x means the stage costs its passes and nothing else; the rest is the stage's
own arithmetic (FAB's projections) or wasted passes. FAB-T also runs once with the weights
requiring gradients, as torchattacks leaves them (its ``backward()`` then computes the weights'
gradients too); ``clead-train eval`` freezes them.

Iterations are cut (``--steps``, ``--queries``) so that it runs in minutes; per-iteration costs
do not depend on the count. ``--report`` (or ``--images``) projects the full suite (100 steps, 9 target classes,
5,000 queries) onto the images each stage attacked in that report's AutoAttack stage log: every
image is charged every iteration, exact for the images that stay robust (most of what FAB-T and
Square see) and an upper bound for the ones broken early.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from training.attacks import create_attack
from training.data import load_split
from training.evaluation import optimize_for_attack

# Iterations per image in the standard suite, per stage: steps x target classes, or queries.
FULL_ITERATIONS = {"apgd-ce": 100, "apgd-t": 9 * 100, "fab-t": 9 * 100, "square": 5000}


class Counting(nn.Module):
    """The model, counting the images it is run on, with and without gradients."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.grad, self.plain = model, 0, 0
        self.train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            self.grad += x.shape[0]
        else:
            self.plain += x.shape[0]
        return self.model(x)


def pass_costs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, reps: int = 20) -> tuple[float, float]:
    """Seconds per image of a bare forward pass, and of forward + backward to the input."""
    def forward():
        with torch.no_grad():
            model(x)

    def forward_backward():
        xg = x.clone().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(model(xg), y), xg)

    costs = []
    for step in (forward, forward_backward):
        step()  # warm-up
        start = time.perf_counter()
        for _ in range(reps):
            step()
        costs.append((time.perf_counter() - start) / (reps * x.shape[0]))
    return costs[0], costs[1]


def stages(steps: int, queries: int, eps: float):
    """(name, what the ``iterations`` column counts, attack(model, x, y)) for every row."""
    from training.attacks.third_party import AutoAttack

    suite = AutoAttack(eps=eps, steps=steps, queries=queries)
    rows = [(f"{name} (torchattacks)", name, lambda m, x, y, n=name: dict(suite.build_stages(m))[n](x, y))
            for name in AutoAttack.STAGES]

    def fab_unfrozen(m, x, y):
        attack = dict(suite.build_stages(m))["fab-t"]  # the suite's own FAB-T, settings and all
        for p in m.parameters():
            p.requires_grad_(True)
        try:
            return attack(x, y)
        finally:
            for p in m.parameters():
                p.requires_grad_(False)
                p.grad = None

    rows.insert(3, ("fab-t, weights not frozen", "fab-t", fab_unfrozen))
    own = [(f"{name} (clead)", name, lambda m, x, y, a=create_attack(name, eps=eps, steps=steps): a(m, x, y))
           for name in ("apgd-ce", "apgd-t")]
    return own + rows


def measure(path: str, data_root: str, n: int, steps: int, queries: int, eps: float = 8 / 255) -> dict:
    """Long because it is one measurement: the images, the bare pass costs, then every stage
    on the same images with its passes counted."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
        artifact = torch.jit.load(path)
    data = load_split(data_root, "test")
    model, _ = optimize_for_attack(artifact, data.images[:16].float() / 255, channels_last=True)
    for p in model.parameters():
        p.requires_grad_(False)  # as during clead-train eval's torchattacks stages
    x_all, y_all = data.images[: 4 * n].float() / 255, data.labels[: 4 * n].long()
    with torch.no_grad():
        correct = (model(x_all).argmax(1) == y_all).nonzero().squeeze(1)[:n]
    x, y = x_all[correct], y_all[correct]
    forward, forward_backward = pass_costs(model, x, y)
    rows = []
    for label, stage, attack in stages(steps, queries, eps):
        counting = Counting(model)
        torch.manual_seed(0)
        start = time.perf_counter()
        x_adv = attack(counting, x, y)
        seconds = time.perf_counter() - start
        with torch.no_grad():
            robust = int((model(x_adv).argmax(1) == y).sum())
        iterations = counting.plain if stage == "square" else counting.grad
        bare = counting.grad * forward_backward + counting.plain * forward
        rows.append({"label": label, "stage": stage, "seconds": seconds, "grad_passes": counting.grad,
                     "plain_passes": counting.plain, "overhead": seconds / bare, "robust": robust,
                     "per_iteration": seconds / max(iterations, 1)})
    return {"n": len(y), "forward": forward, "forward_backward": forward_backward, "rows": rows}


def stage_images(report_path: str) -> list[int]:
    """Images each AutoAttack stage attacked, from a report's stage log."""
    report = json.loads(open(report_path).read())
    log = next((r.get("stages") for r in report["attacks"] if r["attack"] == "autoattack" and r.get("stages")), None)
    if not log:
        raise SystemExit(f"{report_path} has no AutoAttack stage log to project onto; give --images instead")
    return [int(s["images"]) for s in log]


def projection(result: dict, images: list[int]) -> list[tuple[str, int, float]]:
    """(stage, images it attacks, projected seconds at full settings), stage by stage."""
    from training.attacks.third_party import AutoAttack

    cost = {r["stage"]: r["per_iteration"] for r in result["rows"] if r["label"].endswith("(torchattacks)")}
    return [(stage, k, k * FULL_ITERATIONS[stage] * cost[stage]) for stage, k in zip(AutoAttack.STAGES, images)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="models/cifar10/clead.pt", help="a TorchScript artifact")
    p.add_argument("--data", default="../shared/data/cifar10")
    p.add_argument("--n", type=int, default=64, help="correctly classified test images attacked (one batch)")
    p.add_argument("--steps", type=int, default=10, help="steps of APGD and FAB (the suite uses 100)")
    p.add_argument("--queries", type=int, default=100, help="Square's queries (the suite uses 5,000)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--report", help="an evaluation report.json with an AutoAttack stage log to project onto")
    where.add_argument("--images", help="images each stage attacks, comma-separated (APGD-CE: the clean-correct "
                                        "ones, then what each stage leaves robust), e.g. 611,384,339,339")
    args = p.parse_args(argv)
    images = stage_images(args.report) if args.report else [int(v) for v in args.images.split(",")] if args.images else None
    result = measure(args.model, args.data, args.n, args.steps, args.queries)
    ms = 1000
    print(f"{args.model}: {result['n']} correctly classified test images in one batch, channels_last, "
          f"{torch.get_num_threads()} threads; {args.steps} steps, {args.queries} queries")
    print(f"bare passes: forward {ms * result['forward']:.2f} ms/image, forward + backward to the input "
          f"{ms * result['forward_backward']:.2f} ms/image\n")
    print("| stage | seconds | image-passes with gradient | without | overhead | ms per iteration-image | robust |\n"
          "|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        print(f"| {r['label']} | {r['seconds']:.1f} | {r['grad_passes']} | {r['plain_passes']} | {r['overhead']:.2f}x "
              f"| {ms * r['per_iteration']:.2f} | {r['robust']}/{result['n']} |")
    if images:
        rows = projection(result, images)
        total = sum(s for _, _, s in rows)
        source = f"the stage log of {args.report}" if args.report else f"{args.images} images"
        print(f"\nFull suite projected onto {source} (every image charged every iteration):\n")
        print("| stage | images | projected minutes |\n|---|---|---|")
        for stage, images, seconds in rows:
            print(f"| {stage} | {images} | {seconds / 60:.1f} |")
        print(f"| all | | {total / 60:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

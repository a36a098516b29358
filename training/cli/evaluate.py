"""``clead-train eval``: run ``training.evaluation`` on an artifact and write its reports.

The command line only: the evaluation is ``training.evaluation.runner``, the reports
``training.evaluation.report``.

Writes ``report.json`` (rewritten after every attack, so ``--resume`` continues a long
run), ``report.md`` and ``robustness_curve.png``; ``--update-metadata`` records the
accuracies in the artifact's metadata JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import torch

from training.attacks import torchattacks_version
from training.cli.common import resolve_device
from training.config import parse_eps
from training.data import DEFAULT_DATA_PATH, ImageSet
from training.evaluation import (
    DEFAULT_ATTACKS, balanced_subset, describe_model, evaluate, optimize_for_attack, parse_attacks, parse_n,
    plot_curve, record_metrics, render_markdown, robustness_curve, valid_attack_names,
)
from training.evaluation.runner import threads_per_worker
from training.pauses import watch
from training.runinfo import cpu_model, git_commit


# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="exported artifact (.pt TorchScript / .pt2), training checkpoint or run dir")
    p.add_argument("--data", default=DEFAULT_DATA_PATH,
                   help="dataset source (see training.data); default %(default)s")
    p.add_argument("--split", default="test", choices=("train", "test"))
    p.add_argument("--cache-dir", default=None, help="decoded-dataset cache (default $CLEAD_CACHE or ~/.cache/clead)")
    p.add_argument("--attacks", default=DEFAULT_ATTACKS,
                   help=f"comma-separated name[:key=value...], e.g. pgd:steps=50:restarts=5, cw30; "
                        f"names: {', '.join(valid_attack_names())}; default %(default)s")
    p.add_argument("--eps", default="8/255", help="L-inf radius, 8/255 or 0.031 (default %(default)s)")
    p.add_argument("--n", default="1000", help="images: a seeded class-balanced subset, or 'all' (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0, help="subset choice and attack random starts")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--out", required=True, help="output directory for report.json, report.md, robustness_curve.png")
    p.add_argument("--resume", action="store_true", help="reuse attacks already in OUT/report.json with identical settings")
    p.add_argument("--curve-eps", default="0,2,4,8,12,16",
                   help="eps values of the curve, in /255 units (default %(default)s)")
    p.add_argument("--curve-n", type=int, default=200, help="images for the curve (default %(default)s)")
    p.add_argument("--curve-attacks", default=None,
                   help="attacks for the curve (default: the --attacks list minus autoattack and square)")
    p.add_argument("--no-curve", action="store_true", help="skip robustness_curve.png")
    p.add_argument("--sanity", action="store_true", help="also run the sanity checks of training.evaluation.sanity on --curve-n images")
    p.add_argument("--no-sanity-autoattack", action="store_true",
                   help="leave AutoAttack out of --sanity (by far its slowest check on a CPU)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--freeze", action=argparse.BooleanOptionalAction, default=False,
                   help="fold BatchNorm into the convolutions of a TorchScript model first (same logits to 1e-4, checked)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=False,
                   help="run the model in channels_last (NHWC) layout (same logits to 1e-4, checked)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--workers", type=int, default=1,
                   help="CPU processes attacking batches side by side, the threads shared among them; results "
                        "depend on --batch-size, not on this (default %(default)s)")
    p.add_argument("--update-metadata", action="store_true",
                   help="write the measured accuracies into the artifact's metadata JSON (metrics)")


def _environment(device: torch.device, command: str) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    env = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": name, "torch": torch.__version__,
           "torchattacks": torchattacks_version(), "git_commit": git_commit(), "command": command}
    if device.type == "cpu":
        env["cpu"] = cpu_model()  # the seconds of each attack depend on it
    return env


def run(args: argparse.Namespace) -> int:
    from training.export import write_json_atomic

    eps, n, specs = parse_eps(args.eps), parse_n(args.n), parse_attacks(args.attacks)
    curve_specs = parse_attacks(args.curve_attacks) if args.curve_attacks else [s for s in specs if not s.third_party]
    curve_eps = [parse_eps(f"{v.strip()}/255") for v in args.curve_eps.split(",") if v.strip()]
    device = resolve_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    watch(out)  # `clead-train pause OUT` stops this run; its attacks' seconds leave the pause out

    model, info, data, execution = _load(args, device)
    previous = _previous_report(out / "report.json", info) if args.resume else None
    command = " ".join(["clead-train", *getattr(args, "argv", sys.argv[1:])])
    header = {"model": info, "environment": {**_environment(device, command), "execution": execution}}
    # --resume also reuses the curve and the sanity checks when they were made with the same
    # settings, and keeps those of the previous report that this call does not redo. They are
    # in every save, so a run killed during a long attack leaves them in report.json.
    kept = {f"{key}{suffix}": previous.get(f"{key}{suffix}")
            for key in ("curve", "sanity") if previous and previous.get(key) for suffix in ("", "_settings")}

    def save(partial: dict) -> None:
        partial["data"].update(source=args.data, split=args.split)
        write_json_atomic(out / "report.json", {**header, **kept, **partial})

    progress = not args.no_progress
    report = evaluate(model, data, specs, eps, n, args.batch_size, device, args.seed, progress, previous, on_update=save,
                      workers=args.workers)
    report.update(kept)  # save() has already added the data source and split
    stamp_provenance(report["attacks"], header["environment"], (previous or {}).get("environment"))
    if not args.no_curve and curve_specs and curve_eps:
        _add_curve(report, previous, args, model, data, curve_specs, curve_eps, device, out / "robustness_curve.png",
                   f"{info['name']}: accuracy vs eps")
        save(report)
    if args.sanity:
        _add_sanity(report, previous, args, model, data, eps, device)
    save(report)
    if args.update_metadata:
        record_metrics(Path(args.model), report, header["environment"])
    markdown = render_markdown({**header, **report})
    (out / "report.md").write_text(markdown)
    print(markdown)
    return 0


def stamp_provenance(attacks: list[dict], environment: dict, previous: Optional[dict]) -> None:
    """Record in each attack entry where it ran (``ran``: date, device, CPU, commit).

    The report's ``environment`` is this call's; an attack that ``--resume`` reused keeps its own
    ``ran``, or takes the previous report's environment, where it did run, so that its seconds
    stay tied to the machine that measured them.
    """
    keys = ("date", "device", "cpu", "git_commit")
    for entry in attacks:
        if "ran" in entry:
            continue
        source = previous if entry.get("resumed") and previous else environment
        entry["ran"] = {k: source[k] for k in keys if source.get(k) is not None}


def _load(args: argparse.Namespace, device: torch.device) -> tuple[torch.nn.Module, dict, ImageSet, dict]:
    """The model (laid out for attacks as asked), what it says of itself, the data, and how it runs."""
    from training.data import load_split
    from training.export import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    model, meta = load_model(args.model)
    info = describe_model(args.model, meta)
    size = (meta.get("input_size") or [3, 32, 32])[-1]
    data = load_split(args.data, args.split, args.cache_dir, size)
    if args.workers < 1 or (args.workers > 1 and device.type != "cpu"):
        raise ValueError(f"--workers {args.workers}: give 1 or more, and more than 1 only on the CPU")
    model, execution = optimize_for_attack(model.to(device), data.images[:64].to(device).float() / 255,
                                           args.freeze, args.channels_last)
    execution.update(workers=args.workers, threads_per_worker=threads_per_worker(args.workers))
    _check_classes(info.get("classes"), data)
    return model, info, data, execution


def _reused(report: dict, previous: Optional[dict], key: str, settings: dict) -> bool:
    """Take ``key`` (the curve, the sanity checks) from the previous report when it was made
    with the same settings (``--resume``); True if it was."""
    if previous and previous.get(key) and previous.get(f"{key}_settings") == settings:
        report[key], report[f"{key}_settings"] = previous[key], settings
        return True
    return False


def _add_curve(report: dict, previous: Optional[dict], args: argparse.Namespace, model, data: ImageSet, specs,
               eps_values: list[float], device: torch.device, png: Path, title: str) -> None:
    settings = {"eps": list(eps_values), "n": args.curve_n, "attacks": [c.label for c in specs],
                "seed": args.seed, "data": report["data"].get("indices_sha1")}
    if not _reused(report, previous, "curve", settings):
        report["curve"] = robustness_curve(model, data, specs, eps_values, args.curve_n, args.batch_size,
                                           device, args.seed, not args.no_progress, workers=args.workers)
        report["curve_settings"] = settings
        plot_curve(report["curve"], png, title)


def _add_sanity(report: dict, previous: Optional[dict], args: argparse.Namespace, model, data: ImageSet, eps: float,
                device: torch.device) -> None:
    from training.evaluation.sanity import run_sanity_checks

    settings = {"eps": eps, "n": args.curve_n, "seed": args.seed, "autoattack": not args.no_sanity_autoattack}
    if not _reused(report, previous, "sanity", settings):
        subset = data.subset(balanced_subset(data.labels, args.curve_n, args.seed))
        x, y = subset.images.float() / 255, subset.labels
        checks = run_sanity_checks(model, x, y, eps, device=device, batch_size=args.batch_size, seed=args.seed,
                                   autoattack=settings["autoattack"], workers=args.workers)
        report["sanity"], report["sanity_settings"] = [c.as_dict() for c in checks], settings


def _check_classes(classes: Optional[list], data: ImageSet) -> None:
    if classes is None or not data.classes:
        return
    if len(classes) != len(data.classes):
        raise ValueError(f"the model has {len(classes)} classes but the data has {len(data.classes)}: "
                         "wrong --data or --model?")
    if list(classes) != list(data.classes):
        warnings.warn(f"model classes {classes} differ from the data's {data.classes}; labels are compared by index")


def _previous_report(path: Path, info: dict) -> Optional[dict]:
    if not path.is_file():
        return None
    old = json.loads(path.read_text())
    if old.get("model", {}).get("sha256") not in (info["sha256"], info.get("logits_from")):
        raise ValueError(f"{path} belongs to another model (sha256 differs); use another --out or drop --resume")
    return old

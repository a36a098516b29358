"""``clead-train export RUN --out model.pt``: a run's best checkpoint -> a served artifact.

Given an exported artifact instead of a run, it ships that file under ``--out`` byte for byte
(``training.export.copy_artifact``): the evaluations of the artifact stay valid for the copy."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from training.checkpoint import BEST, LAST, model_from_checkpoint, resolve_checkpoint
from training.export import FORMATS, copy_artifact, export_artifact, is_artifact
from training.pauses import net_wall_seconds, paused_seconds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN", help="run directory (its best.pt), a checkpoint file, or an exported artifact to ship "
                             "under --out unchanged (same sha256; name and file updated in its metadata)")
    parser.add_argument("--out", required=True, help="artifact path: .pt (TorchScript) or .pt2 (torch.export)")
    parser.add_argument("--format", choices=sorted(FORMATS), help="default: from the --out suffix")
    parser.add_argument("--which", choices=("best", "last"), default="best", help="checkpoint of the run to export")
    parser.add_argument("--name", help="model name in the metadata (default: the --out file stem)")
    parser.add_argument("--version", default=None, help="model version in the metadata (default 1; a copied "
                                                          "artifact keeps its own)")


def checkpoint_metadata(state: dict, name: str, version: str) -> dict:
    """What a served model should say about itself, from a training checkpoint."""
    cfg = state["config"]
    return {
        "name": name,
        "version": version,
        "classes": list(state["classes"]),
        "mean": state["mean"],
        "std": state["std"],
        "architecture": state["model_name"],
        "model_kwargs": state.get("model_kwargs", {}),
        "method": cfg["method"]["name"],
        "method_settings": state.get("method_settings", {}),
        "train_eps": cfg["attack"]["eps"] if cfg["method"]["name"] != "standard" else 0.0,
        "train_attack": cfg["attack"],
        "epochs": state["epoch"],
        "weights": state.get("selected", "model"),  # "ema": the run's weight average was exported
        "recipe": {"optim": cfg["optim"], "batch_size": cfg["data"]["batch_size"], "amp": cfg.get("amp"),
                   "model": cfg["model"]},
        "metrics": {k: v for k, v in state.get("metrics", {}).items()
                    if k.startswith(("val_", "ema_val_")) or k in ("train_acc", "wall_seconds")},
        "git_commit": state.get("git_commit"),
        "versions": state.get("versions"),
    }


def run(args: argparse.Namespace) -> int:
    if is_artifact(Path(args.run_dir)):
        if args.format or args.which != "best":
            raise ValueError("--format and --which apply to a run; an exported artifact is copied as it is")
        path = copy_artifact(args.run_dir, args.out, args.name, args.version)
        print(f"copied {args.run_dir} -> {path} (same sha256) and {path.with_suffix('.json')}", file=sys.stderr)
        return 0
    prefer = BEST if args.which == "best" else LAST
    ckpt = resolve_checkpoint(args.run_dir, prefer)
    model, state = model_from_checkpoint(ckpt, prefer)
    out = Path(args.out)
    meta = checkpoint_metadata(state, args.name or out.stem, args.version or "1")
    meta["source_checkpoint"] = str(ckpt)
    summary = ckpt.parent / "summary.json"
    if summary.is_file():  # how the run was made: command, wall time, hardware
        import json

        info = json.loads(summary.read_text())
        meta["training"] = {k: info.get(k) for k in ("command", "wall_seconds", "hardware", "epochs_run",
                                                     "best_epoch", "train_images", "git_commit")}
        # The cost of the run: its clock without the pauses `clead-train pause` recorded.
        meta["training"]["paused_seconds"] = paused_seconds(ckpt.parent)
        meta["training"]["wall_seconds"] = net_wall_seconds(ckpt.parent, info.get("wall_seconds"))
    size = tuple(int(s) for s in (3, state["config"]["data"]["image_size"], state["config"]["data"]["image_size"]))
    path = export_artifact(model, out, meta, input_size=size, fmt=args.format)
    print(f"exported {ckpt} (epoch {state['epoch']}) -> {path} and {path.with_suffix('.json')}", file=sys.stderr)
    return 0

"""The reports of an evaluation: ``report.md``, the robustness curve, the artifact's metrics.

``render_markdown(report)`` turns a ``report.json`` (``training.evaluation.runner``) into
markdown, ``plot_curve`` draws accuracy against eps, ``record_metrics`` writes the measured
accuracies into an artifact's metadata.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

from training.evaluation.specs import fmt_eps


def plot_accuracy_vs_eps(lines: list[tuple[str, list[float], list[float]]], path: str | Path, title: str,
                         ylabel: str = "accuracy (%)", legend_size: float | None = None) -> Path:
    """Accuracy against L-inf eps, one line per ``(label, eps values, accuracies)``; the line
    labelled "worst case" is dashed black. Used by every report that draws a curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    try:
        for label, eps, ys in lines:
            style = dict(color="black", linestyle="--") if label == "worst case" else {}
            ax.plot([255 * e for e in eps], [100 * y for y in ys], marker="o", label=label, **style)
        ax.set_xlabel("eps (L-inf, x/255)")
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=legend_size)
        ax.set_title(title)
        fig.tight_layout()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:  # a figure left open stays in pyplot's registry for the life of the process
        plt.close(fig)
    return Path(path)


def plot_curve(curve: dict, path: str | Path, title: str = "") -> Path:
    """One report's robustness curve (``runner.robustness_curve``): a line per attack."""
    lines = [(label, curve["eps"], ys) for label, ys in curve["accuracy"].items()]
    return plot_accuracy_vs_eps(lines, path, title, f"accuracy (%) on {curve['n']} images")



def _fmt_settings(settings: dict) -> str:
    parts = []
    for k, v in settings.items():
        if k in ("eps", "name", "targeted", "norm", "seed") or v is None:
            continue
        parts.append(f"{k}={fmt_eps(v) if k == 'alpha' else v}")
    return ", ".join(parts)


def render_markdown(report: dict) -> str:
    model, data = report.get("model", {}), report["data"]
    lines = [f"# Robustness report: {model.get('name', 'model')}", ""]
    if model:
        lines.append(f"- model: `{model.get('path')}` (sha256 `{str(model.get('sha256'))[:16]}`), "
                     f"method: {model.get('method') or 'unknown'}")
    subset = f"class-balanced, seed {data['seed']}" if data["class_balanced"] else "all images"
    lines.append(f"- data: {data.get('source', '?')} ({data.get('split', '?')} split), "
                 f"{data['n']} of {data['of']} images ({subset})")
    lines.append(f"- threat model: L-inf, eps = {fmt_eps(report['eps'])} ({report['eps']:.5f})")
    third = sorted({r["implementation"] for r in report["attacks"] if r["attack"] == "autoattack"})
    if any(r["attack"] == "autoattack" for r in report["attacks"]):
        lines.append(f"- AutoAttack: standard suite (APGD-CE, APGD-T, FAB-T, Square) run by {', '.join(third)}")
    env = report.get("environment", {})
    if env:
        lines.append(f"- run: {env.get('date')}, device {env.get('device')}{_fmt_cpu(env)}, torch {env.get('torch')}, "
                     f"commit {str(env.get('git_commit'))[:10]}{_fmt_execution(env.get('execution'))}")
    lines += _fmt_reused(report["attacks"], env)
    lines += ["", "| attack | implementation | settings | eps | n | accuracy | seconds |", "|---|---|---|---|---|---|---|"]
    c = report["clean"]
    lines.append(f"| clean | - | - | 0 | {c['n']} | {100 * c['accuracy']:.2f}% | {c['seconds']:.1f} |")
    for r in report["attacks"]:
        eps = fmt_eps(r["eps"]) + (" (L2)" if r["norm"] == "l2" else "")
        lines.append(f"| {r['label']} | {r['implementation']} | {_fmt_settings(r['settings'])} | {eps} | {r['n']} "
                     f"| {100 * r['accuracy']:.2f}% | {r['seconds']:.1f} |")
    w = report.get("worst_case")
    if w and w["attacks"]:
        lines.append(f"| **worst case** | - | all of: {', '.join(w['attacks'])} | {fmt_eps(report['eps'])} | {w['n']} "
                     f"| **{100 * w['accuracy']:.2f}%** | - |")
    for r in report["attacks"]:
        if r.get("stages"):
            lines += ["", f"{r['label']}, stage by stage (each attacks what the earlier ones left robust):", "",
                      "| stage | images attacked | broken | seconds |", "|---|---|---|---|"]
            lines += [f"| {s['attack']} | {s['images']} | {s['broken']} | {s['seconds']:.1f} |" for s in r["stages"]]
    if report.get("curve"):
        lines += ["", f"Robustness curve ({report['curve']['n']} images): `robustness_curve.png`."]
    if report.get("sanity"):
        lines += ["", "| sanity check (Carlini et al. 2019) | passed | measured |", "|---|---|---|"]
    for check in report.get("sanity", []):
        values = ", ".join(f"{k}={100 * v:.1f}%" for k, v in check["values"].items())
        lines.append(f"| {check['name']} | {'yes' if check['passed'] else '**NO**'} | {values} |")
    return "\n".join(lines) + "\n"



def describe_model(path: str | Path, meta: dict) -> dict:
    from training.checkpoint import resolve_checkpoint
    from training.export import sha256_file

    path = Path(path)
    file = path if path.is_file() else resolve_checkpoint(path)
    info = {
        "path": str(path),
        "name": meta.get("name") or path.stem,
        "sha256": meta.get("sha256") or sha256_file(file),
        "method": meta.get("method") if isinstance(meta.get("method"), str) else (meta.get("method") or {}).get("name"),
        "format": meta.get("format") or meta.get("source"),
        "classes": meta.get("classes"),
    }
    # An artifact with the suspicion score (clead-train suspicion augment) was checked to give the
    # logits of the file it was built from, bit for bit: that file's reports are this one's.
    logits_from = (meta.get("suspicion") or {}).get("logits_from")
    if logits_from:
        info["logits_from"] = logits_from
    return info


def _fmt_cpu(env: dict) -> str:
    return f" ({env['cpu']})" if env.get("cpu") else ""


def reused_runs(attacks: list[dict], env: dict) -> list[str]:
    """"<labels>: <date>, device <d> (<cpu>), commit <c>" for each earlier run whose attacks a
    ``--resume`` reused (their ``ran`` differs from the report's environment)."""
    earlier: dict[tuple, list[str]] = {}
    for r in attacks:
        ran = r.get("ran")
        if ran and (ran.get("date"), ran.get("git_commit")) != (env.get("date"), env.get("git_commit")):
            earlier.setdefault((ran.get("date"), ran.get("device"), ran.get("cpu"), ran.get("git_commit")), []).append(r["label"])
    return [f"{', '.join(labels)}: {date}, device {device}{f' ({cpu})' if cpu else ''}, commit {str(commit)[:10]}"
            for (date, device, cpu, commit), labels in earlier.items()]


def _fmt_reused(attacks: list[dict], env: dict) -> list[str]:
    """One line per earlier run whose attacks ``--resume`` reused: their seconds are that run's."""
    return [f"- reused from an earlier run (--resume): {line}" for line in reused_runs(attacks, env)]


def _fmt_execution(execution: Optional[dict]) -> str:
    """How the passes ran (``clead-train eval`` flags): what its times are times of."""
    if not execution:
        return ""
    parts = [name for name, on in (("frozen", execution.get("frozen")), ("channels_last", execution.get("channels_last"))) if on]
    workers = int(execution.get("workers") or 1)
    threads = execution.get("threads_per_worker") if workers > 1 else execution.get("threads")
    parts.append(f"{workers} worker{'s' if workers > 1 else ''} x {threads} thread{'s' if threads != 1 else ''}"
                 if workers > 1 else f"{threads} thread{'s' if threads != 1 else ''}")
    return "; " + ", ".join(parts)


def record_metrics(artifact: Path, report: dict, environment: dict) -> Path:
    """Merge a report's accuracies into ``<artifact>.json`` under ``metrics``.

    Keys: ``clean_acc``/``clean_n`` (kept from the run that saw the most images, so clean
    accuracy on the whole test split survives a later attack run on a subset), and per attack
    ``<label>_acc`` (``pgd20_acc``, ``autoattack_acc``, ...) with its image count in
    ``attack_n``. The model file, hence its sha256, is untouched.
    """
    from training.export import metadata_path, write_json_atomic

    meta_file = metadata_path(artifact)
    if not artifact.is_file() or not meta_file.is_file():
        raise FileNotFoundError(f"--update-metadata needs an exported artifact with its JSON beside it; {meta_file} is missing")
    meta = json.loads(meta_file.read_text())
    metrics = dict(meta.get("metrics") or {})
    clean = report["clean"]
    if clean["n"] >= int(metrics.get("clean_n") or 0):
        metrics.update(clean_acc=clean["accuracy"], clean_n=clean["n"])
    attack_n = dict(metrics.get("attack_n") or {})
    for entry in report["attacks"]:
        key = re.sub(r"[^a-z0-9]+", "_", entry["label"].lower()).strip("_")
        metrics[f"{key}_acc"] = entry["accuracy"]
        attack_n[key] = entry["n"]
        if entry["attack"] == "autoattack":
            metrics["autoattack_implementation"] = entry["implementation"]
    # ``n``: the images AutoAttack saw when it ran (the headline robust number), else the most.
    n = attack_n.get("autoattack", max(attack_n.values(), default=clean["n"]))
    metrics.update(attack_n=attack_n, n=n, eps=report["eps"],
                   split=report["data"].get("split"), evaluated=environment.get("date"),
                   evaluated_commit=environment.get("git_commit"))
    meta["metrics"] = metrics
    write_json_atomic(meta_file, meta)
    return meta_file

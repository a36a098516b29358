"""Results JSON -> ``docs/benchmarks.md`` and its plots (``docs/benchmarks/*.png``).

Every figure in the summary is computed here from the one results file, so the page always
shows one run. Throughput is ``images / median time`` of a case; ratios divide cases of the
same run.
"""

from __future__ import annotations

from statistics import median

import json
import os
from pathlib import Path
from typing import Any, Iterable, Optional

REPO = Path(__file__).resolve().parents[1]
BUDGETS = {("clead", "pgd-at"): 1.25, ("clead", "trades"): 1.0,  # design budgets, time ratios
           ("clead-sg", "pgd-at"): 1.25, ("clead-sg", "trades"): 1.0}
RATIO_LABELS = {"clead": "C-LEAD", "clead-sg": "C-LEAD (stop-grad clean view)"}
SERVER_LABELS = {"torchserve": "TorchServe, clead handler", "stock": "TorchServe, stock image_classifier (anchor)",
                 "triton": "Triton (PyTriton), clead predictor"}


def cases(data: dict, kind: str) -> list[dict]:
    return [b for b in data["benchmarks"] if b.get("extra_info", {}).get("kind") == kind]


def ips(case: dict) -> float:
    """Images (or requests) per second of a case, from pytest-benchmark's median."""
    return case["extra_info"]["images"] / case["stats"]["median"]


def table(header: list[str], rows: Iterable[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}" if abs(v) >= 1 else f"{v:.3f}"
    return "–" if v is None else str(v)


def check(ok: bool) -> str:
    return "yes" if ok else "**no**"


# -- sections -------------------------------------------------------------------------------
def training_section(data: dict) -> str:
    """Per-method medians and, per round, paired time ratios (see bench_training)."""
    found = sorted(cases(data, "train-interleaved"), key=lambda c: c["extra_info"]["steps"])
    if not found:
        return ""
    rows, ratio_rows = [], []
    batch = found[0]["extra_info"]["images"]
    for c in found:
        steps, seconds = c["extra_info"]["steps"], c["extra_info"]["seconds"]
        for method, times in seconds.items():
            if method == "standard" and steps != found[0]["extra_info"]["steps"]:
                continue  # no attack: one row is enough
            rows.append([method, steps if method != "standard" else "–", batch / median(times),
                         median(times) * 1000, len(times)])
        for (a, b), budget in BUDGETS.items():
            if a not in seconds or b not in seconds:
                continue
            ratio = median([ta / tb for ta, tb in zip(seconds[a], seconds[b])])
            ratio_rows.append([f"{RATIO_LABELS[a]} / {b.upper()}", steps, ratio, two_pass_floor(seconds, a, b),
                               f"<= {budget}", check(ratio <= budget)])
    return "\n\n".join([
        "## 1. Training step throughput",
        f"One full step (inner attack, method forward, backward, SGD step) on PreAct ResNet-18 at width 0.25, "
        f"batch {batch}, L-inf eps 8/255. The methods run round-robin (each round runs all of them once, in a "
        f"rotating order), so load from other jobs hits every method alike. *clead-sg* is C-LEAD with "
        f"`--no-clead-clean-grad` (stop-gradient clean view).",
        table(["method", "attack steps", "images/s", "ms / step", "rounds"], rows),
        "Cost ratios (median over rounds of the per-round time ratio, C-LEAD over the baseline). "
        "*two-pass floor* is what C-LEAD would cost if its head and contrastive loss were free: PGD-AT's step "
        "plus one training pass (the *standard* step) of the same round, over PGD-AT's step. Default C-LEAD "
        "back-propagates through both views, so it cannot go below that floor; the budget is met only where "
        "the floor itself is within it, i.e. where an attack step costs as much as a training pass.",
        table(["ratio", "attack steps", "measured", "two-pass floor", "budget", "within"], ratio_rows),
    ])


def two_pass_floor(seconds: dict[str, list[float]], method: str, baseline: str) -> Optional[float]:
    """Median per-round (PGD-AT + standard) / PGD-AT: the cost of adding one more training pass
    (the clean view, with its backward) to a PGD-AT step. Only for default C-LEAD over PGD-AT."""
    if method != "clead" or baseline != "pgd-at" or "standard" not in seconds:
        return None
    return median([(p + s) / p for p, s in zip(seconds["pgd-at"], seconds["standard"])])


def attack_section(data: dict) -> str:
    rows = [[c["extra_info"]["attack"], c["extra_info"]["steps"], ips(c), c["stats"]["median"] * 1000]
            for c in cases(data, "attack")]
    if not rows:
        return ""
    batch = cases(data, "attack")[0]["extra_info"]["images"]
    return "\n\n".join(["## 2. Attack throughput",
                        f"One call on a batch of {batch}, PreAct ResNet-18 width 0.25 in eval mode, eps 8/255.",
                        table(["attack", "iterations", "images/s", "ms / batch"], rows)])


def inference_section(data: dict, figdir: Path) -> str:
    found = cases(data, "inference")
    if not found:
        return ""
    parts = ["## 3. Inference throughput versus batch size",
             "images/s of one forward pass (`torch.inference_mode`); *torchscript* is the exported artifact the "
             "servers load, *eager* the model it was exported from."]
    curves: dict[str, dict[str, dict[int, float]]] = {}
    for c in found:
        e = c["extra_info"]
        curves.setdefault(e["width"], {}).setdefault(e["variant"], {})[e["batch"]] = ips(c)
    for width, variants in curves.items():
        batches = sorted({b for v in variants.values() for b in v})
        rows = [[v] + [pts.get(b) for b in batches] for v, pts in variants.items()]
        label = "width 0.25" if width == "quarter" else "width 1.0 (full)"
        parts += [f"**PreAct ResNet-18, {label}** (images/s)", table(["variant"] + [f"batch {b}" for b in batches], rows)]
    plot = plot_curves(curves, figdir / "inference.png")
    parts.append(f"![inference throughput versus batch size]({plot})")
    return "\n\n".join(parts)


def served_section(data: dict, figdir: Path) -> str:
    served = cases(data, "served")
    if not served:
        return ""
    ceiling = {c["extra_info"]["model"]: ips(c) for c in cases(data, "ceiling")
               if c["extra_info"]["server"] == "in-process"}
    stock224 = [ips(c) for c in cases(data, "ceiling") if c["extra_info"]["server"] == "stock-224-inprocess"]
    main = [c["extra_info"] for c in served if not c["extra_info"]["server"].startswith("torchserve-")]
    tuning = [c["extra_info"] for c in served if c["extra_info"]["server"].startswith("torchserve-")]
    parts = ["## 4. Served throughput and latency",
             "Each server is started by the suite on 127.0.0.1 with the shipped configuration, then loaded by "
             "`benchmarks/load.py`: a closed loop of *concurrency* threads, one kept-alive connection each, sending "
             "32x32 PNGs (the same 64 files everywhere). *ratio* = served requests/s over the in-process ceiling; "
             "*overhead* = served ms per request minus in-process ms per image; *batch* = mean batch a request "
             "shared its forward pass with (from the answers, or for the stock handler from TorchServe's "
             "`model_metrics.log`); *client CPU* = the load generator's own CPU per request."]
    if ceiling:
        rows = [[m, v, 1000 / v] for m, v in ceiling.items()] + [["quarter, stock transforms at 224 px", s, 1000 / s]
                                                                 for s in stock224]
        parts += ["In-process ceiling (same artifact, same decoding and preprocessing, batches of 8, this process):",
                  table(["model", "images/s", "ms / image"], rows)]
    rows = []
    for e in sorted(main, key=lambda e: (e["model"], e["server"], e["concurrency"])):
        top = ceiling.get(e["model"])
        rows.append([SERVER_LABELS.get(e["server"], e["server"]), e["model"], e["concurrency"], e["requests"], e["rps"],
                     e["p50_ms"], e["p95_ms"], e["p99_ms"], e["p99_ms"] / e["p50_ms"], e["mean_batch"],
                     e["rps"] / top if top else None, (1000 / e["rps"] - 1000 / top) if top else None,
                     e["client_cpu_ms_per_request"]])
    if main:
        parts.append(table(["server", "model", "concurrency", "requests", "req/s", "p50 ms", "p95 ms", "p99 ms",
                            "p99/p50", "batch", "ratio", "overhead ms", "client CPU ms"], rows))
        parts.append(goals(main, ceiling))
        parts.append(f"![requests/s and latency versus concurrency]({plot_served(main, figdir / 'served.png')})")
    if tuning:
        rows = [[e["server"].removeprefix("torchserve-"), e["max_batch"], e["max_delay_ms"], e.get("workers"),
                 e["concurrency"], e["requests"], e["rps"], e["p50_ms"], e["p99_ms"], e["mean_batch"]]
                for e in sorted(tuning, key=lambda e: (e["concurrency"], e["server"]))]
        parts += ["### Configuration sweep (TorchServe, clead handler, quarter-width model)",
                  table(["config", "batch size", "max delay ms", "workers", "concurrency", "requests", "req/s",
                         "p50 ms", "p99 ms", "batch"], rows)]
    return "\n\n".join(parts)


def goals(main: list[dict], ceiling: dict[str, float]) -> str:
    at = {(e["server"], e["model"], e["concurrency"]): e for e in main}
    lines = ["Goals, checked on this run:", ""]
    for server in ("torchserve", "triton"):
        full = at.get((server, "full", 32))
        if full and "full" in ceiling:
            r = full["rps"] / ceiling["full"]
            lines.append(f"- {SERVER_LABELS[server]}: served / in-process ratio on the full-width model at "
                         f"concurrency 32 = {r:.2f} (goal >= 0.8): {check(r >= 0.8)}")
        q = at.get((server, "quarter", 32))
        if q:
            lines.append(f"- {SERVER_LABELS[server]}: p99 / p50 at concurrency 32 = {q['p99_ms'] / q['p50_ms']:.2f} "
                         f"(goal <= 2): {check(q['p99_ms'] <= 2 * q['p50_ms'])}")
    return "\n".join(lines)


def anchor_section(data: dict) -> str:
    found = sorted((c["extra_info"] for c in cases(data, "anchor")), key=lambda e: e["concurrency"])
    if not found:
        return ""
    rows = [[e["concurrency"], len(e["rps_ours"]), e["images"] // (2 * len(e["rps_ours"])),
             " / ".join(f"{v:.0f}" for v in e["rps_ours"]), " / ".join(f"{v:.0f}" for v in e["rps_stock"]),
             e["p50_ours"], e["p50_stock"], e["ratio"], check(e["ratio"] > 1)] for e in found]
    return "\n\n".join([
        "### The anchor: clead handler versus TorchServe's stock image_classifier",
        "Both TorchServe instances serve the same quarter-width artifact with the same batching settings and "
        "are up together; their loads alternate (ours, stock, ours, stock, ...), and the ratio is the median "
        "of the per-pair ratios, so drift from other jobs on the machine hits both alike. The stock handler "
        "runs with its transforms set to 32x32 and no ImageNet normalisation (`benchmarks/stock_handler.py`): "
        "unmodified it resizes to 256, crops 224 and normalises again, i.e. runs our model on 49x the pixels "
        "(the in-process row *stock transforms at 224 px* above shows that cost). Ours does more per request: "
        "format allow-list, byte and pixel limits before decoding, EXIF orientation, alpha handling, per-request "
        "errors, top-k from a header, and a larger answer. It also runs the model differently: it converts the "
        "TorchScript module to channels_last and freezes it at load, and its worker keeps freed memory instead "
        "of page-faulting the activations back in every batch (`serving.predictor.keep_freed_memory`); the stock "
        "handler runs the module as loaded, with whatever malloc behaviour its process happens to get.",
        table(["concurrency", "pairs", "requests / run", "clead req/s", "stock req/s", "clead p50 ms",
               "stock p50 ms", "clead / stock", "ours faster"], rows),
    ])


def gpu_section(data: dict, gpu: Optional[tuple[Path, dict]] = None) -> str:
    """The GPU cases of this run; without any, those of ``gpu`` (a GPU machine's results file)."""
    found, note = cases(data, "train-gpu") + cases(data, "inference-gpu"), ""
    if not found and gpu is not None:
        path, other = gpu
        found = cases(other, "train-gpu") + cases(other, "inference-gpu")
        commit = (other.get("commit_info") or {}).get("id", "?")[:12]
        note = (f"No CUDA device in this run: these are from [`{path.name}`](../benchmarks/results/{path.name}) "
                f"({other.get('datetime', '?')[:19]}, commit {commit}), made on a GPU machine with "
                f"`python -m benchmarks.run -k cuda --out benchmarks/results/<date>-<card>-gpu.json`. "
                "Training step: PreAct ResNet-18 full width, batch 256, 10 attack steps, bf16 autocast; inference: "
                "the same network at batch 256, channels_last.")
    if not found:
        return ("## 5. GPU cases\n\nCUDA inference at batch 256 (fp32/bf16/fp16) and the bf16 AMP training step "
                "are marked `gpu` and were skipped: no CUDA device in this run, and no `*-gpu.json` results file.")
    rows = [[c["extra_info"]["kind"], c["extra_info"].get("method") or c["extra_info"].get("variant"),
             c["extra_info"].get("dtype", "bf16 autocast"), ips(c), c["extra_info"]["device"]] for c in found]
    train = {c["extra_info"]["method"]: ips(c) for c in found if c["extra_info"]["kind"] == "train-gpu"}
    ratio = (f"C-LEAD / PGD-AT time per step on the GPU at 10 attack steps: **{train['pgd-at'] / train['clead']:.2f}** "
             "(budget <= 1.25)." if {"pgd-at", "clead"} <= set(train) else "")
    return "\n\n".join(s for s in ["## 5. GPU cases", note, table(["case", "what", "dtype", "images/s", "card"], rows),
                                   ratio] if s)


def latest_gpu_results(folder: Path) -> Optional[tuple[Path, dict]]:
    """The newest ``*-gpu.json`` in ``folder`` (GPU cases measured on another machine), if any."""
    files = sorted(Path(folder).glob("*-gpu.json"))
    return (files[-1], json.loads(files[-1].read_text())) if files else None


# -- plots ----------------------------------------------------------------------------------
def plot_curves(curves: dict, path: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.6), squeeze=False)
    for ax, (width, variants) in zip(axes[0], curves.items()):
        for variant, pts in variants.items():
            xs = sorted(pts)
            ax.plot(xs, [pts[x] for x in xs], marker="o", label=variant)
        ax.set(xscale="log", xlabel="batch size", ylabel="images/s", title=f"PreAct ResNet-18, {width} width")
        ax.grid(alpha=0.3)
        ax.legend()
    return save(fig, path)


def plot_served(main: list[dict], path: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    for server in sorted({e["server"] for e in main}):
        pts = sorted((e for e in main if e["server"] == server and e["model"] == "quarter"),
                     key=lambda e: e["concurrency"])
        if not pts:
            continue
        cs = [e["concurrency"] for e in pts]
        line = a.plot(cs, [e["rps"] for e in pts], marker="o", label=server)[0]
        b.plot(cs, [e["p50_ms"] for e in pts], marker="o", color=line.get_color(), label=f"{server} p50")
        b.plot(cs, [e["p99_ms"] for e in pts], marker="x", ls="--", color=line.get_color(), label=f"{server} p99")
    a.set(xscale="log", xlabel="concurrency", ylabel="requests/s", title="served throughput (width 0.25)")
    b.set(xscale="log", yscale="log", xlabel="concurrency", ylabel="latency ms", title="latency (width 0.25)")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save(fig, path)


def save(fig, path: Path) -> str:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name if path.parent.name == "" else f"{path.parent.name}/{path.name}"


# -- the page -------------------------------------------------------------------------------
def header(data: dict, source: Path, doc: Path) -> str:
    m, run, commit = data.get("machine_info", {}), data.get("clead", {}), data.get("commit_info", {})
    src = os.path.relpath(Path(source).resolve(), REPO)
    link = os.path.relpath(Path(source).resolve(), Path(doc).resolve().parent)
    return "\n".join([
        "# Benchmarks",
        "",
        f"Generated by `make bench` (`python -m benchmarks.run`) from [`{src}`]({link}); do not edit by hand.",
        "Every figure below is a ratio or a curve measured in the same run: the machines are shared, so absolute",
        "timings drift between runs. Models are untrained (random init): throughput does not depend on weights.",
        "",
        f"- machine: {run.get('host', m.get('node'))}, {m.get('cpu', {}).get('brand_raw', m.get('processor', '?'))}, "
        f"{run.get('cpus', '?')} CPUs, no GPU used" + ("" if not cases(data, "inference-gpu") else " except section 5"),
        f"- run: {data.get('datetime', '?')}, wall time {run.get('wall_s', 0) / 60:.1f} min, torch intra-op threads "
        f"{run.get('threads', '?')}, load average {run.get('load_average_before', 0):.1f} before / "
        f"{run.get('load_average_after', 0):.1f} after (other jobs shared the CPU)",
        f"- commit {commit.get('id', '?')[:12]}{' (dirty tree)' if commit.get('dirty') else ''}, "
        f"python {m.get('python_version', '?')}",
    ])


def write_report(data: dict, doc: Path, source: Path) -> Path:
    doc = Path(doc)
    gpu = latest_gpu_results(Path(source).parent)
    figdir = doc.parent / doc.stem
    sections = [header(data, Path(source), doc), training_section(data), attack_section(data),
                inference_section(data, figdir), served_section(data, figdir), anchor_section(data), gpu_section(data, gpu)]
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text("\n\n".join(s for s in sections if s) + "\n")
    return doc

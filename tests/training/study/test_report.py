"""The robustness study: tables, verdict, missing runs and sanity findings come from the files.

Runs and reports are written in the real layouts: ``config.yaml`` from ``TrainConfig``,
``summary.json`` / ``metrics.jsonl`` as ``training.train`` writes them, and ``report.json``
entries as ``training.evaluation.evaluate`` returns them (one test runs ``evaluate`` and
``robustness_curve`` for real on an untrained ``tiny_cnn``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from training import config as C
from training import cli
from training.study.report import build_study

EPS = 8 / 255
HW = "1 x NVIDIA H100"


def write_run(root: Path, name: str, method: str, wall: float, val: list[tuple[float, float]], best: int,
              hardware: str = HW, finished: bool = True, amp: str = "fp32", **method_settings) -> str:
    """A run directory: config.yaml, metrics.jsonl (one line per (val clean, val robust) epoch), summary.json."""
    run = root / "runs" / name
    run.mkdir(parents=True)
    cfg = C.TrainConfig(method=C.MethodConfig(name=method, options=method_settings), epochs=len(val), out=str(run))
    (run / "config.yaml").write_text(yaml.safe_dump(C.to_dict(cfg), sort_keys=False))
    history = [{"epoch": i + 1, "val_clean_acc": c, "val_robust_acc": r, "val_n": 500, "wall_seconds": wall * (i + 1) / len(val),
                "best": i + 1 == best} for i, (c, r) in enumerate(val)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    info = {"command": f"clead-train fit --method {method} --out {run}", "git_commit": "abc1234", "hardware": hardware,
            "amp": amp}
    (run / "run.json").write_text(json.dumps(info))
    if finished:
        summary = {**info, "epochs_run": len(val), "best_epoch": best, "wall_seconds": wall, "final": history[-1]}
        (run / "summary.json").write_text(json.dumps(summary))
    return f"runs/{name}"


def _entry(attack: str, accuracy: float, n: int, **settings) -> dict:
    return {"attack": attack, "label": attack, "implementation": "test", "accuracy": accuracy, "n": n, "eps": EPS,
            "norm": "linf", "settings": {"eps": EPS, **settings}, "seconds": 1.0}


def write_report(root: Path, name: str, clean: float, attacks: dict[str, float], n: int = 1000, **extra) -> str:
    """report.json with clean accuracy and per-attack accuracies (fgsm, pgd20, cw, apgd-t, autoattack, square)."""
    specs = {"pgd20": ("pgd", {"steps": 20, "restarts": 1})}
    entries = []
    for label, acc in attacks.items():
        attack, settings = specs.get(label, (label, {}))
        entries.append({**_entry(attack, acc, n, **settings), "label": label})
    report = {"model": {"name": name}, "environment": {"command": f"clead-train eval --out runs/{name}", "device": "cuda",
                                                     "git_commit": "def5678"},
              "eps": EPS, "data": {"n": n, "of": 10000, "seed": 0, "class_balanced": True, "indices_sha1": f"sha-{n}"},
              "clean": {"accuracy": clean, "n": n, "seconds": 1.0}, "attacks": entries, **extra}
    out = root / "runs" / name
    out.mkdir(parents=True)
    (out / "report.json").write_text(json.dumps(report))
    return f"runs/{name}"


def main_rows(root: Path, clead_aa: float = 0.48, clead_clean: float = 0.80, clead_wall: float = 7200.0) -> dict:
    """PGD-AT (AA 45.0, clean 80.5), TRADES (AA 46.0, clean 79.0) and C-LEAD with the given numbers."""
    rows = []
    for name, method, clean, aa, wall in (("PGD-AT", "pgd-at", 0.805, 0.45, 3600.0), ("TRADES", "trades", 0.79, 0.46, 4000.0),
                                          ("C-LEAD", "clead", clead_clean, clead_aa, clead_wall)):
        key = method.replace("-", "")
        run = write_run(root, f"cifar10-{key}", method, wall, [(0.5, 0.3), (clean, aa)], best=2)
        ev = write_report(root, f"eval-{key}", clean,
                          {"fgsm": aa + 0.1, "pgd20": aa + 0.03, "cw": aa + 0.02, "apgd-t": aa + 0.005, "autoattack": aa})
        rows.append({"name": name, "method": method, "run": run, "eval": ev, "role": "main"})
    return {"eps": "8/255", "rows": rows}


def table_row(markdown: str, name: str) -> list[str]:
    line = next(line for line in markdown.splitlines() if line.startswith(f"| {name} "))
    return [c.strip() for c in line.strip("|").split("|")]


def test_table_numbers_come_from_the_files(tmp_path):
    md, rows, _ = build_study(main_rows(tmp_path), tmp_path)
    cells = table_row(md, "C-LEAD (`clead`)")
    # clean, FGSM, PGD-20, CW, APGD-CE, APGD-T, AutoAttack, images, wall time, epochs, hardware
    assert cells[1:8] == ["80.00", "58.00", "51.00", "50.00", "not run", "48.50", "48.00"]
    assert cells[8:] == ["1000 / 1000", "2.00 h", "2/2 (best 2)", HW]
    assert table_row(md, "PGD-AT (`pgd-at`)")[1] == "80.50"
    assert "Every row has its files." in md and all(not r.missing for r in rows)


def test_the_hardware_cell_names_a_reduced_training_precision(tmp_path):
    spec = main_rows(tmp_path)
    spec["rows"].append({"name": "C-LEAD bf16", "method": "clead", "role": "main",
                         "run": write_run(tmp_path, "bf16-clead", "clead", 900.0, [(0.5, 0.3)], best=1,
                                          hardware="CPU (AMD EPYC, 2 threads) x 1 process(es)", amp="bfloat16")})
    md, _, _ = build_study(spec, tmp_path)
    assert table_row(md, "C-LEAD bf16 (`clead`)")[-1] == "CPU (AMD EPYC, 2 threads) x 1 process(es), bf16 autocast"
    assert table_row(md, "C-LEAD (`clead`)")[-1] == HW  # fp32: nothing added


@pytest.mark.parametrize("aa, clean, verdict", [
    (0.48, 0.80, "**C-LEAD beats PGD-AT and TRADES here**"),  # +3 / -0.5 vs PGD-AT, +2 / +1 vs TRADES
    (0.46, 0.80, "**C-LEAD does not beat PGD-AT or TRADES here**"),  # AA only +1 point
    (0.50, 0.79, "**C-LEAD does not beat PGD-AT here**"),  # clean 1.5 points below PGD-AT, not below TRADES
])
def test_verdict_follows_the_numbers(tmp_path, aa, clean, verdict):
    md, _, _ = build_study(main_rows(tmp_path, clead_aa=aa, clead_clean=clean), tmp_path)
    summary = md.split("## Summary")[1].split("##")[0]
    assert verdict in summary
    d_aa = 100 * (aa - 0.45)
    assert f"AutoAttack {100 * aa:.2f}% vs 45.00% ({d_aa:+.2f} points" in summary
    assert "training wall time 2.00x (2.00 h vs 1.00 h)" in summary  # C-LEAD 7200 s vs PGD-AT 3600 s
    assert ("target >= +2: met" in summary) == (d_aa >= 2)


def test_missing_runs_are_reported_not_run(tmp_path):
    spec = main_rows(tmp_path)
    spec["rows"] = [r for r in spec["rows"] if r["method"] != "trades"]
    spec["rows"].append({"name": "TRADES", "method": "trades", "run": "runs/cifar10-trades-x", "eval": "runs/eval-trades-x"})
    md, rows, _ = build_study(spec, tmp_path)
    cells = table_row(md, "TRADES (`trades`)")
    assert set(cells[1:]) == {"not run"}
    not_run = md.split("## Not run")[1].split("##")[0]
    assert "- TRADES (main): runs/cifar10-trades-x: no such run directory" in not_run
    assert "- TRADES (main): runs/eval-trades-x/report.json: no evaluation report" in not_run
    assert "the comparison with TRADES is open (not run)" in md
    assert "vs TRADES: not measured" in md


def test_unfinished_run_has_no_wall_time_and_no_verdict(tmp_path):
    spec = main_rows(tmp_path)
    clead = next(r for r in spec["rows"] if r["method"] == "clead")
    clead["run"] = write_run(tmp_path, "cifar10-clead-partial", "clead", 100.0, [(0.3, 0.2)], best=1, finished=False)
    clead["eval"] = "runs/eval-clead-none"
    md, _, _ = build_study(spec, tmp_path)
    cells = table_row(md, "C-LEAD (`clead`)")
    assert cells[1] == "not run" and cells[9] == "unfinished (1.7 min so far)" and cells[10] == "1/1, unfinished"
    assert "**No verdict yet**" in md
    assert "runs/cifar10-clead-partial/summary.json: training unfinished (1 epochs logged)" in md


def test_violated_ordering_is_a_failed_check(tmp_path):
    spec = main_rows(tmp_path)
    spec["rows"][0]["eval"] = write_report(tmp_path, "eval-bad", 0.8, {"fgsm": 0.5, "pgd20": 0.40, "autoattack": 0.45,
                                                                        "square": 0.30})
    md, _, _ = build_study(spec, tmp_path)
    failed = [line for line in md.splitlines() if "**FAILED**" in line]
    assert any("AutoAttack no weaker than PGD-20" in line and "AutoAttack 45.00%, PGD-20 40.00%" in line for line in failed)
    assert any("black-box (Square) no stronger than white-box" in line for line in failed)
    assert "**Failed checks**" in md and "PGD-AT: AutoAttack no weaker than PGD-20" in md
    assert not any("C-LEAD" in line for line in failed)


def test_report_sanity_entries_and_ablations(tmp_path):
    spec = main_rows(tmp_path)
    sanity = [{"name": "eps=0 leaves accuracy unchanged", "passed": False, "values": {"clean": 0.8, "pgd_eps0": 0.7}}]
    spec["rows"][2]["eval"] = write_report(tmp_path, "eval-clead-s", 0.8, {"autoattack": 0.48}, sanity=sanity)
    run = write_run(tmp_path, "abl-tau", "clead", 900.0, [(0.61, 0.33), (0.62, 0.31)], best=1, tau=0.1,
                    loss="supcon")
    spec["rows"].append({"name": "tau=0.1", "method": "clead", "run": run, "role": "ablation"})
    md, _, _ = build_study(spec, tmp_path)
    assert any("eps=0 leaves accuracy unchanged | **FAILED** | clean 80.0%, pgd_eps0 70.0%" in line for line in md.splitlines())
    cells = table_row(md, "tau=0.1")
    # loss, tau, lambda, proj_dim, ce_on, inner, attack steps, epochs, val clean/robust at the best epoch (1, not 2)
    assert cells[2:10] == ["supcon", "0.1", "1.0", "128", "adv", "ce", "10", "2/2 (best 1)"]
    assert cells[10:] == ["61.00", "33.00 (10 steps)", "500"]
    assert "tau=0.1" not in md.split("## Accuracy per method")[1].split("##")[0]  # ablations never in the test table


def test_real_report_curve_and_plot(tmp_path):
    """Reports written by the real ``evaluate``/``robustness_curve`` feed the study; the PNG is drawn."""
    from training.data import ImageSet
    from training.evaluation import evaluate, robustness_curve
    from training.models import create_model

    torch.manual_seed(0)
    data = ImageSet(torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8), torch.arange(12) % 10)
    model = create_model("tiny_cnn", num_classes=10).eval()
    report = evaluate(model, data, "fgsm,pgd20", EPS, n=12, batch_size=12, progress=False)
    report["curve"] = robustness_curve(model, data, "fgsm,pgd:steps=2", [0.0, 4 / 255, EPS], n=12, batch_size=12,
                                       progress=False)
    (tmp_path / "runs" / "eval-tiny").mkdir(parents=True)
    (tmp_path / "runs" / "eval-tiny" / "report.json").write_text(json.dumps(report))
    run = write_run(tmp_path, "tiny", "standard", 10.0, [(0.1, 0.0)], best=1)
    spec = {"rows": [{"name": "Tiny", "method": "standard", "run": run, "eval": "runs/eval-tiny"}]}
    md, _, png = build_study(spec, tmp_path, tmp_path / "docs" / "curves.png")
    assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"
    assert "![accuracy vs eps](curves.png)" in md
    assert table_row(md, "Tiny (`standard`)")[1] == f"{100 * report['clean']['accuracy']:.2f}"
    assert any("eps=0 leaves accuracy unchanged | passed" in line for line in md.splitlines())
    assert any("large eps drives accuracy to ~0 | not measured" in line for line in md.splitlines())


def test_cli_writes_the_doc_and_strict_fails_on_missing(tmp_path, capsys):
    spec = main_rows(tmp_path)
    spec["rows"].append({"name": "MISSING", "method": "trades", "run": "runs/nope", "eval": "runs/eval-nope"})
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(spec))
    out = tmp_path / "docs" / "robustness.md"
    args = ["--spec", str(tmp_path / "study.yaml"), "--out", str(out), "--root", str(tmp_path)]
    assert cli.main(["report", *args]) == 0 and out.is_file()
    assert "not run: MISSING: " in capsys.readouterr().err
    assert cli.main(["report", *args, "--strict"]) == 1


def test_spec_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="unknown method 'pgd'.*pgd-at"):
        build_study({"rows": [{"name": "x", "method": "pgd"}]}, tmp_path)
    with pytest.raises(ValueError, match="unknown role"):
        build_study({"rows": [{"name": "x", "method": "clead", "role": "final"}]}, tmp_path)


def test_without_autoattack_the_summary_compares_apgd_t_and_the_own_targets(tmp_path):
    spec = main_rows(tmp_path, clead_aa=0.36, clead_clean=0.70)
    for key in ("pgdat", "clead", "trades"):  # drop AutoAttack from every report
        file = tmp_path / "runs" / f"eval-{key}" / "report.json"
        report = json.loads(file.read_text())
        report["attacks"] = [a for a in report["attacks"] if a["attack"] != "autoattack"]
        file.write_text(json.dumps(report))
    md, _, _ = build_study(spec, tmp_path)
    summary = md.split("## Summary")[1].split("##")[0]
    assert "**No verdict yet**" in summary
    assert ("Meanwhile, on attacks that AutoAttack itself runs, C-LEAD minus PGD-AT on APGD-T: -9.00 points, "
            "independent standard error 2.19: not paired, no per-image masks; minus TRADES on APGD-T: -10.00 points, "
            "independent standard error 2.19: not paired, no per-image masks; against the study's target of "
            "+2 points under AutoAttack.") in summary
    assert "on our APGD-T" in summary and "C-LEAD 36.50% vs PGD-AT 45.50% (-9.00 points" in summary
    assert "AutoAttack not run (target >= 38%; APGD-T alone leaves 36.50%, already below that target)" in summary
    assert "clean 70.00% (target >= 68%: met)" in summary


def _with_apgd_masks(root: Path, key: str, ce: str, t: str) -> None:
    """Give eval-KEY per-image robust masks for APGD-T and an APGD-CE entry, both without AutoAttack."""
    file = root / "runs" / f"eval-{key}" / "report.json"
    report = json.loads(file.read_text())
    n = len(ce)
    report["attacks"] = [a for a in report["attacks"] if a["attack"] not in ("autoattack", "apgd-t")] + [
        {**_entry("apgd-ce", ce.count("1") / n, n), "robust_mask": ce},
        {**_entry("apgd-t", t.count("1") / n, n), "robust_mask": t},
    ]
    file.write_text(json.dumps(report))


def test_apgd_ce_and_apgd_t_combine_per_image_until_autoattack_is_measured(tmp_path):
    spec = main_rows(tmp_path, clead_clean=0.70)
    # 10 images; C-LEAD: each APGD alone leaves 40%, but they break different images: 20% survive both.
    _with_apgd_masks(tmp_path, "clead", "1111000000", "1100110000")
    _with_apgd_masks(tmp_path, "pgdat", "1110000000", "1110000000")  # the same 30% survive both
    md, _, _ = build_study(spec, tmp_path)
    cells = table_row(md, "C-LEAD (`clead`)")
    assert cells[5:8] == ["40.00", "40.00", "not run"]
    summary = md.split("## Summary")[1].split("##")[0]
    assert "on our APGD-CE + APGD-T (an image counts only if it survives both" in summary
    assert "C-LEAD 20.00% vs PGD-AT 30.00% (-10.00 points" in summary
    assert "AutoAttack not run (target >= 38%; APGD-CE + APGD-T leave 20.00%, already below that target)" in summary
    # TRADES has APGD-T only: that comparison falls back to APGD-T for both.
    assert "on our APGD-T (targeted" in summary and "C-LEAD 40.00% vs TRADES 46.50%" in summary


def test_fixed_views_row_is_compared_with_online_clead(tmp_path):
    spec = main_rows(tmp_path)
    run = write_run(tmp_path, "cifar10-fixed", "clead-fixed", 600.0, [(0.5, 0.1)], best=1)
    ev = write_report(tmp_path, "eval-fixed", 0.5, {"apgd-t": 0.04, "autoattack": 0.03})
    spec["rows"].append({"name": "fixed", "method": "clead-fixed", "run": run, "eval": ev, "role": "fixed-views"})
    md, _, _ = build_study(spec, tmp_path)
    assert "- fixed (control): AutoAttack 3.00% vs 48.00% for C-LEAD" in md and "(-45.00 points)" in md
    assert table_row(md, "fixed (`clead-fixed`)")[6:8] == ["4.00", "3.00"]


def test_comparisons_on_the_same_images_are_paired(tmp_path):
    """With per-image masks on the same images the verdict gives a paired interval and McNemar."""
    spec = main_rows(tmp_path, clead_aa=0.48, clead_clean=0.80)
    robust = {"pgdat": 450, "trades": 460, "clead": 480}
    for key, k in robust.items():
        file = tmp_path / "runs" / f"eval-{key}" / "report.json"
        report = json.loads(file.read_text())
        mask = "1" * k + "0" * (1000 - k)  # nested: every image robust for PGD-AT is robust for C-LEAD
        for entry in report["attacks"]:
            if entry["attack"] == "autoattack":
                entry["robust_mask"] = mask
        file.write_text(json.dumps(report))
    md, _, _ = build_study(spec, tmp_path)
    summary = md.split("## Summary")[1].split("##")[0]
    assert "+3.00 points, paired 95% CI [+2" in summary
    assert "McNemar p = " in summary and "(30 vs 0 discordant images of 1000)" in summary


def test_included_sections_are_copied_or_reported_missing(tmp_path):
    spec = main_rows(tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "extra.md").write_text("## Suspicion score\n\nmeasured table\n")
    spec["include"] = ["docs/extra.md", "docs/absent.md"]
    md, _, _ = build_study(spec, tmp_path)
    assert "## Suspicion score\n\nmeasured table\n" in md
    assert "not run: `docs/absent.md` does not exist yet." in md


def test_the_spec_names_who_the_verdict_compares(tmp_path):
    spec = main_rows(tmp_path)  # AutoAttack / clean: PGD-AT 45.0 / 80.5, TRADES 46.0 / 79.0, C-LEAD 48.0 / 80.0
    spec["verdict"] = {"candidate": {"method": "trades", "label": "TRADES"},
                       "baselines": [{"method": "pgd-at", "label": "PGD-AT"}, {"method": "clead-fixed", "label": "Fixed"}]}
    md, _, _ = build_study(spec, tmp_path)
    summary = md.split("## Summary")[1].split("##")[0]
    assert summary.lstrip().startswith("**TRADES does not beat PGD-AT here**")  # +1 AutoAttack point, -1.5 clean
    assert "- vs Fixed: not measured: no clean and AutoAttack accuracy for Fixed (not run)." in summary
    assert "TRADES's own targets: AutoAttack 46.00%" in summary and "vs TRADES" not in summary
    assert "## TRADES ablations (validation split)" in md and "C-LEAD ablations" not in md


@pytest.mark.parametrize("verdict, message", [
    ({"candidates": {}}, "spec verdict: unknown key.*'candidates'"),
    ({"baselines": [{"method": "pgd", "label": "PGD"}]}, "spec verdict baselines: unknown method 'pgd'.*pgd-at"),
    ({"candidate": {"method": "clead"}}, r"spec verdict candidate: .* should be \{method: ..., label: ...\}"),
    ({"undefended": "none"}, "spec verdict undefended: unknown method 'none'"),
])
def test_verdict_errors_name_the_problem(tmp_path, verdict, message):
    with pytest.raises(ValueError, match=message):
        build_study({"rows": [{"name": "x", "method": "clead"}], "verdict": verdict}, tmp_path)


@pytest.mark.parametrize("name", ["study.yaml", "screen.yaml"])
def test_the_shipped_specs_load(tmp_path, name):
    from training.study.spec import load_spec

    spec = load_spec(Path(__file__).resolve().parents[3] / "docs" / name)
    md, rows, _ = build_study(spec, tmp_path)  # nothing under tmp_path: every row is "not run"
    assert all(r.missing for r in rows) and md.startswith(f"# {spec['title']}\n")


def test_a_screening_spec_ranks_its_rows_on_validation_and_takes_the_selected_weights(tmp_path):
    """A spec of ablation rows only (docs/screen.yaml) is ranked by validation robust accuracy
    with 95% intervals; an epoch won by the weight average reports the average's numbers."""
    plain = write_run(tmp_path, "scr-a", "pgd-at", 60.0, [(0.40, 0.20), (0.42, 0.25)], best=2)
    averaged = write_run(tmp_path, "scr-b", "pgd-at", 60.0, [(0.40, 0.20), (0.41, 0.22)], best=2)
    metrics = tmp_path / averaged / "metrics.jsonl"
    history = [json.loads(line) for line in metrics.read_text().splitlines()]
    history[1].update(selected_weights="ema", ema_val_clean_acc=0.45, ema_val_robust_acc=0.30)
    metrics.write_text("".join(json.dumps(h) + "\n" for h in history))
    spec = {"title": "Screen", "eps": "8/255", "rows": [
        {"name": "plain", "method": "pgd-at", "run": plain, "role": "ablation", "fit": ""},
        {"name": "averaged", "method": "pgd-at", "run": averaged, "role": "ablation", "fit": "--ema-decay 0.99"}]}
    md, _, png = build_study(spec, tmp_path)
    assert "## Ranking (validation split)" in md and "## Summary" not in md and png is None
    ranking = md.split("## Ranking")[1]
    assert ranking.index("| averaged |") < ranking.index("| plain |")  # 30% (the average) before 25%
    assert "| averaged | `pgd-at` | `--ema-decay 0.99` | 2/2 (best 2) | 45.00 | 30.00 | 4.0 | 500 |" in md
    assert "| plain | `pgd-at` | - | 2/2 (best 2) | 42.00 | 25.00 | 3.8 | 500 |" in md


def test_recorded_pauses_are_not_training_time(tmp_path):
    spec = main_rows(tmp_path)
    ledger = tmp_path / "runs" / "cifar10-clead" / "pauses.jsonl"  # as `clead-train pause` writes it
    ledger.write_text('{"started": "2026-12-01T10:00:00+00:00", "seconds": 1800.0, "pids": [1], "why": "make test"}\n'
                      '{"started": "2026-12-01T11:00:00+00:00", "seconds": 1800.0, "pids": [1], "why": "--seconds 1800"}\n')
    md, _, _ = build_study(spec, tmp_path)
    assert table_row(md, "C-LEAD (`clead`)")[9] == "1.00 h (+ 1.00 h paused, `runs/cifar10-clead/pauses.jsonl`)"
    assert "training wall time 1.00x (1.00 h vs 1.00 h)" in md  # 7200 s on the clock, 3600 s of them paused


def test_sources_name_the_earlier_run_of_attacks_a_resume_reused(tmp_path):
    spec = main_rows(tmp_path)
    path = tmp_path / "runs" / "eval-clead" / "report.json"
    report = json.loads(path.read_text())
    report["environment"]["date"] = "2026-02-01T00:00:00+00:00"
    report["attacks"][-1]["ran"] = {"date": "2026-01-01T00:00:00+00:00", "device": "cpu", "cpu": "AMD EPYC",
                                    "git_commit": "abc1234"}
    path.write_text(json.dumps(report))
    md, _, _ = build_study(spec, tmp_path)
    line = next(x for x in md.splitlines() if x.startswith("- C-LEAD: run"))
    assert "attacks reused from an earlier run: autoattack: 2026-01-01T00:00:00+00:00, device cpu (AMD EPYC), commit abc1234" in line
    assert "reused" not in next(x for x in md.splitlines() if x.startswith("- PGD-AT: run"))

"""`clead-train study`: the spec's rows become fit/select/export/views/eval jobs that run to the end.

About 2 minutes on two CPU cores (each job is a fresh interpreter importing torch): marked slow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from training import cli
from training.study.run import Plan, best_of, build_plan
from training.study.spec import load_spec


def _folder_split(root: Path, split: str, per_class: int, seed: int) -> None:
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    for c in range(3):
        folder = root / split / f"c{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            img = (torch.rand(32, 32, 3, generator=g) * 100 + 70 * c).clamp(0, 255).to(torch.uint8)
            Image.fromarray(img.numpy()).save(folder / f"{i:03d}.png")


SPEC = {
    "eps": "8/255",
    "fit_common": "--model tiny_cnn --epochs 1 --batch-size 16 --optimizer adamw --lr 0.003 --val-size 24 "
                  "--val-n 24 --eps 8/255 --attack-steps 1",
    "evaluation": {"attacks": "fgsm,pgd20", "n": 30, "clean_n": "all", "sanity": False},
    "views_args": "--steps 2",
    "rows": [
        {"name": "Standard", "method": "standard", "fit": "", "run": "runs/std", "ship": "baseline",
         "eval": ["runs/eval-baseline-clean", "runs/eval-baseline"], "role": "main"},
        {"name": "C-LEAD", "method": "clead", "select": "ablation", "run": "runs/clead", "ship": "clead",
         "eval": ["runs/eval-clead"], "role": "main"},
        {"name": "fixed", "method": "clead-fixed", "fit": "", "views": "Standard", "run": "runs/fixed",
         "artifact": "runs/fixed/model.pt", "eval": ["runs/eval-fixed"], "role": "fixed-views"},
        {"name": "a", "method": "clead", "fit": "--clead-weight 1", "run": "runs/abl-a", "role": "ablation"},
        {"name": "b", "method": "clead", "fit": "--clead-weight 0.25", "run": "runs/abl-b", "role": "ablation"},
    ],
}


@pytest.mark.slow
def test_study_runs_every_job_and_reruns_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("CLEAD_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data"
    _folder_split(data, "train", 40, 0)
    _folder_split(data, "test", 20, 1)
    spec = tmp_path / "study.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    root = tmp_path / "out"
    args = ["study", "--spec", str(spec), "--data", str(data), "--prefix", str(root), "--jobs", "2"]
    assert cli.main(args) == 0

    chosen = json.loads((root / "runs" / "clead.selected.json").read_text())["selected"]
    assert (root / "runs" / "clead").resolve() == Path(chosen).resolve()
    assert Path(chosen).resolve() == best_of([root / "runs" / "abl-a", root / "runs" / "abl-b"]).resolve()
    meta = json.loads((root / "models" / "cifar10" / "clead.json").read_text())
    assert set(meta["metrics"]) >= {"clean_acc", "pgd20_acc"} and meta["metrics"]["attack_n"]["pgd20"] == 30
    baseline = json.loads((root / "models" / "cifar10" / "baseline.json").read_text())["metrics"]
    assert baseline["clean_n"] == 60 and baseline["attack_n"]["pgd20"] == 30  # the -clean report: the whole split
    assert json.loads((root / "runs" / "eval-fixed" / "report.json").read_text())["attacks"]
    views = torch.load(root / "runs" / "views-std.pt", weights_only=True)
    assert views["steps"] == 2 and views["images"].shape == (120, 3, 32, 32)
    fixed_cfg = yaml.safe_load((root / "runs" / "fixed" / "config.yaml").read_text())
    assert fixed_cfg["data"]["views"] == str(root / "runs" / "views-std.pt")

    # A second call finds everything done: fits, exports and views are skipped.
    assert cli.main(args) == 0
    status = json.loads((root / "runs" / "study-logs" / "study-status.json").read_text())["status"]
    assert {v for k, v in status.items() if k.split(":")[0] in ("fit", "export", "views")} == {"skipped"}


def test_only_pulls_in_the_rows_a_row_needs(tmp_path):
    plan = build_plan(Plan(SPEC, tmp_path, "data", ["python"]), {"fixed"})
    assert {"fit:Standard", "export:Standard", "views:fixed", "fit:fixed"} <= set(plan.jobs)
    assert not any(name.endswith(":a") for name in plan.jobs)
    plan = build_plan(Plan(SPEC, tmp_path, "data", ["python"]), {"C-LEAD"})
    assert {"fit:a", "fit:b", "select:C-LEAD", "export:C-LEAD"} <= set(plan.jobs)


def test_evaluation_flags_go_to_every_evaluation(tmp_path):
    spec = {**SPEC, "evaluation": {**SPEC["evaluation"], "flags": "--channels-last --threads 2"}}
    plan = build_plan(Plan(spec, tmp_path, "data", ["python"]), {"Standard"})
    evals = [job.argv for name, job in plan.jobs.items() if name.startswith("eval:")]
    assert len(evals) == 2  # the clean report and the attack report
    assert all("--channels-last" in argv and argv[argv.index("--threads") + 1] == "2" for argv in evals)
    plain = build_plan(Plan(SPEC, tmp_path, "data", ["python"]), {"Standard"})
    assert not any("--channels-last" in job.argv for job in plain.jobs.values())


def test_the_shipped_spec_builds_a_plan(tmp_path):
    spec = load_spec(Path(__file__).resolve().parents[3] / "docs" / "study.yaml")
    plan = build_plan(Plan(spec, tmp_path, "data", ["python"]))
    assert {"fit:C-LEAD", "export:C-LEAD", "fit:PGD-AT", "export:PGD-AT"} <= set(plan.jobs)  # the current recipe
    assert {"select:C-LEAD (previous recipe)", "export:C-LEAD (previous recipe)",
            "views:C-LEAD fixed views"} <= set(plan.jobs)
    assert all("," not in row["name"] for row in spec["rows"])  # --only splits on commas
    ablations = [row for row in spec["rows"] if row.get("role") == "ablation"]
    assert all(f"fit:{row['name']}" in plan.jobs["select:C-LEAD (previous recipe)"].needs for row in ablations)
    # The sanity checks run without AutoAttack (sanity: no-autoattack); the 1,000-image table has it.
    attacks = plan.jobs["eval:C-LEAD:eval-ship-e10-clead"].argv
    assert "--sanity" in attacks and "--no-sanity-autoattack" in attacks and "autoattack" in attacks[attacks.index("--attacks") + 1]


def test_clead_train_study_checks_its_rows(tmp_path, capsys):
    def main(args):
        return cli.main(["study", *args])

    spec = tmp_path / "study.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    assert main(["--spec", str(spec), "--dry-run", "--only", "Standard"]) == 0
    assert "fit:Standard  needs -" in capsys.readouterr().out
    assert main(["--spec", str(spec), "--only", "nope"]) == 2
    assert "clead-train study: error: --only: no row(s) named ['nope']" in capsys.readouterr().err

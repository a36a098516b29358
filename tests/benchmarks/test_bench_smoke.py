"""The benchmark suite itself must keep running: one tiny case through ``benchmarks.run``
(pytest-benchmark, the JSON, the report and its plot), at the smoke scale, in seconds."""

from __future__ import annotations

import json

import pytest

from benchmarks import run


def test_suite_runs_one_case_and_writes_the_report(tmp_path):
    out, doc = tmp_path / "results.json", tmp_path / "docs" / "benchmarks.md"
    code = run.main(["--scale", "smoke", "-k", "test_inference and quarter-eager-4",
                     "--out", str(out), "--doc", str(doc)])
    assert code == 0
    data = json.loads(out.read_text())
    [case] = data["benchmarks"]
    assert case["extra_info"] == {**case["extra_info"], "kind": "inference", "batch": 4, "images": 4}
    assert case["stats"]["median"] > 0 and data["clead"]["scale"] == "smoke"
    page = doc.read_text()
    assert "## 3. Inference throughput versus batch size" in page and "| eager |" in page
    assert (doc.parent / "benchmarks" / "inference.png").stat().st_size > 1000


def test_report_ratios_pair_the_rounds_of_one_run(tmp_path):
    """C-LEAD / PGD-AT is the median of per-round ratios (rounds interleave the methods),
    checked against its budget; a slow round for every method does not move it."""
    from benchmarks.report import training_section

    seconds = {"standard": [0.5, 5.0, 0.5], "pgd-at": [1.0, 10.0, 1.0], "clead": [1.6, 16.0, 1.6],
               "trades": [2.0, 20.0, 2.0]}
    page = training_section({"benchmarks": [{"stats": {"median": 1.0}, "extra_info": {
        "kind": "train-interleaved", "steps": 3, "images": 8, "seconds": seconds}}]})
    assert "| C-LEAD / PGD-AT | 3 | 1.60 | 1.50 | <= 1.25 | **no** |" in page  # floor: (1 + 0.5) / 1
    assert "| C-LEAD / TRADES | 3 | 0.800 | – | <= 1.0 | yes |" in page
    assert "| clead | 3 | 5.00 | 1,600 | 3 |" in page  # 8 images / median 1.6 s


def test_interleaved_training_case_runs_at_smoke_scale(tmp_path):
    out, doc = tmp_path / "results.json", tmp_path / "docs" / "benchmarks.md"
    assert run.main(["--scale", "smoke", "-k", "test_train_steps_interleaved and 3", "--out", str(out), "--doc", str(doc)]) == 0
    [case] = json.loads(out.read_text())["benchmarks"]
    assert {len(t) for t in case["extra_info"]["seconds"].values()} == {1}  # smoke: one round each
    assert "C-LEAD / PGD-AT" in doc.read_text()


def test_front_overhead_table_compares_each_path_with_direct():
    """``python -m benchmarks.front_overhead`` (docs/serving.md): medians per path, the front's extra latency."""
    from benchmarks.front_overhead import table

    def run(p50: float, cpu: float) -> dict:
        return {"p50_ms": p50, "mean_ms": p50 + 1, "p99_ms": 3 * p50, "rps": 1000 / p50, "front_cpu_ms": cpu}

    page = table({1: {"direct": [run(5.0, 0.0), run(7.0, 0.0), run(6.0, 0.0)],
                      "front": [run(6.5, 0.4), run(6.0, 0.5), run(9.0, 0.6)]}})
    assert "| 1 | direct | 6.00 | 7.00 | 18.00 | 167 |  |  |" in page
    assert "| 1 | front | 6.50 | 7.50 | 19.50 | 154 | +0.50 ms / +0.50 ms | 0.50 |" in page


def test_gpu_section_uses_a_gpu_results_file_when_this_run_had_no_gpu(tmp_path):
    import json

    from benchmarks.report import gpu_section, latest_gpu_results

    def case(kind, images, median, **info):
        return {"extra_info": {"kind": kind, "images": images, **info}, "stats": {"median": median}}

    other = {"datetime": "2026-11-27T14:25:08", "commit_info": {"id": "abc123"}, "benchmarks": [
        case("train-gpu", 256, 0.064, method="pgd-at", device="NVIDIA H200"),
        case("train-gpu", 256, 0.072, method="clead", device="NVIDIA H200"),
        case("inference-gpu", 256, 0.002, variant="eager", dtype="fp32", device="NVIDIA H200")]}
    assert latest_gpu_results(tmp_path) is None
    (tmp_path / "2026-11-20-h100-gpu.json").write_text(json.dumps({**other, "benchmarks": []}))
    (tmp_path / "2026-11-27-h200-gpu.json").write_text(json.dumps(other))
    path, data = latest_gpu_results(tmp_path)
    assert path.name == "2026-11-27-h200-gpu.json"
    text = gpu_section({"benchmarks": []}, (path, data))
    assert "2026-11-27-h200-gpu.json" in text and "NVIDIA H200" in text and "**1.12**" in text
    assert "were skipped" in gpu_section({"benchmarks": []}, None)


def test_eval_layouts_measures_every_variant_of_one_artifact(tmp_path):
    import torch

    from benchmarks.eval_layouts import VARIANTS, measure
    from training.export import export_artifact
    from training.models import create_model

    torch.manual_seed(0)
    path = export_artifact(create_model("tiny_cnn", num_classes=10).eval(), tmp_path / "m.pt",
                           {"classes": [str(i) for i in range(10)]})
    result = measure(str(path), batch=4, rounds=1, warmup=1)
    assert set(result) == set(VARIANTS)
    assert all(r["fwd"] > 0 and r["fwd+bwd"] > 0 for r in result.values())


def test_train_layouts_times_both_layouts_and_prints_a_row_per_width(capsys):
    from benchmarks.train_layouts import main, measure

    times = measure(0.25, batch=4, rounds=1)
    assert set(times) == {"NCHW", "channels_last"} and all(t > 0 for t in times.values())
    assert main(["--widths", "0.25", "--batch", "4", "--rounds", "1"]) == 0
    assert "| 0.25 |" in capsys.readouterr().out


@pytest.mark.cifar
def test_eval_workers_times_one_process_against_workers_on_the_same_batches(tmp_path, cifar_root, capsys):
    import torch

    from benchmarks.eval_workers import main
    from training.export import export_artifact
    from training.models import create_model

    torch.manual_seed(0)
    path = export_artifact(create_model("tiny_cnn", num_classes=10).eval(), tmp_path / "m.pt",
                           {"classes": [str(i) for i in range(10)]})
    assert main(["--model", str(path), "--data", str(cifar_root), "--attacks", "pgd:steps=2,square:queries=5",
                 "--n", "20", "--batch-size", "5"]) == 0
    out = capsys.readouterr().out
    assert "| pgd:steps=2 |" in out and "| square:queries=5 |" in out
    assert out.count("| yes |") == 2  # the workers attacked the same batches to the same result


@pytest.mark.cifar
def test_autoattack_cost_counts_the_passes_of_every_stage_and_projects_a_report(tmp_path, cifar_root, trained_tiny, capsys):
    from benchmarks.autoattack_cost import FULL_ITERATIONS, main, measure, projection, stage_images
    from training.export import export_artifact

    model, _ = trained_tiny
    path = export_artifact(model, tmp_path / "m.pt", {"classes": [str(i) for i in range(10)]})
    result = measure(str(path), str(cifar_root), n=6, steps=3, queries=4)
    rows = {r["label"]: r for r in result["rows"]}
    n = result["n"]
    assert n == 6
    # APGD makes one pass with gradients per step (and one for its random start), one clean pass.
    assert rows["apgd-ce (clead)"]["grad_passes"] == n * (3 + 1) and rows["apgd-ce (clead)"]["plain_passes"] == n
    assert rows["square (torchattacks)"]["grad_passes"] == 0 and rows["square (torchattacks)"]["plain_passes"] >= n
    assert rows["fab-t, weights not frozen"]["grad_passes"] == rows["fab-t (torchattacks)"]["grad_passes"]
    assert all(r["seconds"] > 0 and 0 <= r["robust"] <= n for r in rows.values())

    report = tmp_path / "report.json"
    report.write_text(json.dumps({"attacks": [{"attack": "autoattack", "stages": [
        {"attack": "apgd-ce", "images": 10, "broken": 4, "seconds": 1.0},
        {"attack": "apgd-t", "images": 6, "broken": 0, "seconds": 1.0}]}]}))
    assert stage_images(str(report)) == [10, 6]
    projected = dict((stage, seconds) for stage, _, seconds in projection(result, [10, 8, 6, 6]))
    assert projected["apgd-ce"] == pytest.approx(10 * FULL_ITERATIONS["apgd-ce"] * rows["apgd-ce (torchattacks)"]["per_iteration"])
    assert projected["apgd-t"] == pytest.approx(8 * 900 * rows["apgd-t (torchattacks)"]["per_iteration"])
    assert projected["square"] == pytest.approx(6 * 5000 * rows["square (torchattacks)"]["per_iteration"])

    assert main(["--model", str(path), "--data", str(cifar_root), "--n", "4", "--steps", "2", "--queries", "3",
                 "--report", str(report)]) == 0
    out = capsys.readouterr().out
    assert "| fab-t, weights not frozen |" in out and "projected minutes" in out

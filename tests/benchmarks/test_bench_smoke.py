"""The benchmark suite itself must keep running: one tiny case through ``benchmarks.run``
(pytest-benchmark, the JSON, the report and its plot), at the smoke scale, in seconds."""

from __future__ import annotations

import json

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


def test_report_ratios_come_from_the_same_run(tmp_path):
    """The C-LEAD / PGD-AT ratio is the quotient of the two medians, checked against its budget."""
    from benchmarks.report import training_section

    def case(method, median):
        return {"stats": {"median": median}, "extra_info": {"kind": "train", "method": method, "steps": 3, "images": 8}}

    page = training_section({"benchmarks": [case("pgd-at", 1.0), case("clead", 1.5), case("trades", 2.0)]})
    assert "| C-LEAD / PGD-AT | 3 | 1.50 | <= 1.25 | **no** |" in page
    assert "| C-LEAD / TRADES | 3 | 0.750 | <= 1.0 | yes |" in page

"""Evaluation: parsing, subsets, the library entry point, the CLI and the sanity checks."""

from __future__ import annotations

import json

import pytest
import torch

from training import CIFAR10_CLASSES
from training.config import parse_eps
from training.data import ImageSet
from training.evaluation import (
    AttackSpec, balanced_subset, build_attack, evaluate, fmt_eps, parse_attacks, parse_n, robust_mask,
)

# Cheap settings: the properties tested do not depend on iteration counts.
FAST_ATTACKS = "fgsm,pgd:steps=3,apgd-ce:steps=5,autoattack:steps=3:queries=20,square:queries=20"


# ---------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, value", [("8/255", 8 / 255), ("0.031", 0.031), ("0", 0.0), (" 4/255 ", 4 / 255)])
def test_parse_eps(text, value):
    assert parse_eps(text) == pytest.approx(value)


@pytest.mark.parametrize("text, match", [("eight", "8/255"), ("8", "pixel units"), ("1/0", "8/255"), ("-0.1", "outside")])
def test_parse_eps_rejects_with_a_hint(text, match):
    with pytest.raises(ValueError, match=match):
        parse_eps(text)


def test_parse_attacks_syntax():
    specs = parse_attacks("fgsm, pgd:steps=50:restarts=5:alpha=2/255 ,cw30,autoattack,square:queries=100")
    assert [s.name for s in specs] == ["fgsm", "pgd", "cw", "autoattack", "square"]
    assert specs[1].settings == {"steps": 50, "restarts": 5, "alpha": pytest.approx(2 / 255)}
    assert specs[1].label == "pgd:steps=50:restarts=5:alpha=2/255"
    assert specs[2].settings == {"steps": 30}
    assert specs[3].third_party and not specs[0].third_party
    assert parse_attacks("pgd:random_start=false")[0].settings == {"random_start": False}


@pytest.mark.parametrize("text, match", [
    ("pgd,foo", "unknown attack 'foo'.*apgd-ce.*autoattack.*square"),
    ("pgd:steps", "not key=value"),
    ("pgd,pgd", "twice"),
    ("", "no attacks"),
])
def test_parse_attacks_errors(text, match):
    with pytest.raises(ValueError, match=match):
        parse_attacks(text)


def test_parse_n():
    assert parse_n("all") is None and parse_n("1000") == 1000
    for bad in ("0", "-3", "many"):
        with pytest.raises(ValueError, match="positive integer or 'all'"):
            parse_n(bad)


def test_build_attack_defaults_and_overrides():
    pgd = build_attack(AttackSpec("pgd"), 8 / 255)
    assert (pgd.steps, pgd.eps, pgd.restarts) == (20, pytest.approx(8 / 255), 1)
    assert pgd.alpha == pytest.approx(2 / 255)  # PGD-20 with step eps/4
    custom = build_attack(parse_attacks("pgd:steps=7:eps=4/255")[0], 8 / 255)
    assert (custom.steps, custom.eps) == (7, pytest.approx(4 / 255))
    assert build_attack(AttackSpec("pgd-l2"), 8 / 255).eps == 0.5  # L2 has its own budget
    aa = build_attack(AttackSpec("autoattack"), 8 / 255, n_classes=10)
    assert (aa.steps, aa.queries, aa.version) == (100, 5000, "standard")  # Croce and Hein 2020
    assert aa.implementation.startswith("torchattacks 3.5")
    with pytest.raises(ValueError, match="bad settings for attack 'pgd:step=3'"):
        build_attack(parse_attacks("pgd:step=3")[0], 8 / 255)


def test_fmt_eps():
    assert fmt_eps(8 / 255) == "8/255" and fmt_eps(0.5 / 255) == "0.5/255" and fmt_eps(0.031) == "0.031"


# ---------------------------------------------------------------------------------------
# Subsets
# ---------------------------------------------------------------------------------------
def test_balanced_subset_is_seeded_balanced_and_nested():
    labels = torch.arange(10).repeat_interleave(torch.tensor([50, 40, 30, 60, 50, 50, 50, 50, 50, 5]))
    a = balanced_subset(labels, 50, seed=1)
    assert torch.equal(a, balanced_subset(labels, 50, seed=1))
    assert not torch.equal(a, balanced_subset(labels, 50, seed=2))
    assert torch.equal(a, a.sort().values) and len(a.unique()) == 50
    assert torch.bincount(labels[a], minlength=10).tolist() == [5] * 10
    small = balanced_subset(labels, 30, seed=1)
    assert set(small.tolist()) <= set(a.tolist())  # the curve's images are among the report's
    big = torch.bincount(labels[balanced_subset(labels, 200, seed=1)], minlength=10)
    assert big[9] == 5 and big.sum() == 200  # a short class is exhausted, the others fill in
    assert torch.equal(balanced_subset(labels, None), torch.arange(len(labels)))


# ---------------------------------------------------------------------------------------
# The library function, on the trained tiny model
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_report(trained_tiny):
    model, test = trained_tiny
    updates = []
    report = evaluate(model, test, FAST_ATTACKS, eps=8 / 255, n=100, batch_size=64, progress=False,
                      on_update=lambda r: updates.append((len(r["attacks"]), "partial" in r)))
    return report, updates


@pytest.mark.cifar
def test_evaluate_reports_every_attack(trained_tiny, tiny_report):
    model, test = trained_tiny
    report, updates = tiny_report
    # Saved after every attack, and after every batch of the attack that runs (resumable).
    assert [n for n, partial in updates if not partial] == [1, 2, 3, 4, 5]
    assert {n for n, partial in updates if partial} == {0, 1, 2, 3, 4}
    idx = balanced_subset(test.labels, 100, 0)
    with torch.no_grad():
        clean = (model(test.images[idx].float() / 255).argmax(1) == test.labels[idx]).float().mean().item()
    assert report["clean"]["accuracy"] == pytest.approx(clean) and report["clean"]["n"] == 100
    assert report["clean"]["accuracy"] > 0.3
    for row in report["attacks"]:
        assert row["n"] == 100 and row["eps"] == pytest.approx(8 / 255) and row["seconds"] >= 0
        assert row["accuracy"] <= report["clean"]["accuracy"]
        # Per-image: only clean-correct images can be robust.
        assert all(r <= c for r, c in zip(map(int, row["robust_mask"]), map(int, report["clean"]["correct_mask"])))
    rows = {r["attack"]: r for r in report["attacks"]}
    assert rows["autoattack"]["implementation"].startswith("torchattacks 3.5.1")
    assert rows["square"]["implementation"].startswith("torchattacks")
    assert rows["pgd"]["implementation"].startswith("clead")
    assert rows["pgd"]["settings"]["steps"] == 3
    worst = report["worst_case"]
    assert worst["accuracy"] <= min(r["accuracy"] for r in report["attacks"])
    assert len(worst["attacks"]) == 5


@pytest.mark.cifar
def test_evaluate_resume_reuses_identical_attacks(trained_tiny, tiny_report):
    model, test = trained_tiny
    report, _ = tiny_report
    again = evaluate(model, test, "pgd:steps=3,fgsm:random_start=true", n=100, batch_size=64, progress=False, resume_from=report)
    assert again["attacks"][0].get("resumed") and again["attacks"][0]["robust_mask"] == report["attacks"][1]["robust_mask"]
    assert not again["attacks"][1].get("resumed")  # other settings: run again
    with pytest.warns(UserWarning, match="other images"):
        other = evaluate(model, test, "fgsm", n=50, progress=False, resume_from=report)
    assert not other["attacks"][0].get("resumed")


@pytest.mark.cifar
def test_results_do_not_depend_on_attack_order(trained_tiny):
    model, test = trained_tiny
    a = evaluate(model, test, "pgd:steps=2,cw:steps=2", n=40, progress=False)
    b = evaluate(model, test, "cw:steps=2,pgd:steps=2", n=40, progress=False)
    assert a["attacks"][0]["robust_mask"] == b["attacks"][1]["robust_mask"]


@pytest.mark.cifar
def test_workers_attack_the_same_batches_to_the_same_result(trained_tiny):
    """Two forked workers, one thread each: the same masks and the same AutoAttack stage
    totals as one process, because each batch starts from its own random state."""
    model, test = trained_tiny
    attacks = "pgd:steps=3,square:queries=20,autoattack:steps=2:queries=10"
    threads = torch.get_num_threads()
    one = evaluate(model, test, attacks, n=60, batch_size=16, progress=False)
    assert round(one["clean"]["accuracy"] * one["clean"]["n"]) > 16  # two batches or more: workers run
    torch.set_num_threads(2)  # two workers of one thread each, as on the 2-core CI machine
    try:
        two = evaluate(model, test, attacks, n=60, batch_size=16, progress=False, workers=2)
    finally:
        torch.set_num_threads(threads)
    assert [r["robust_mask"] for r in two["attacks"]] == [r["robust_mask"] for r in one["attacks"]]
    strip = lambda stages: [(s["attack"], s["images"], s["broken"]) for s in stages]  # noqa: E731
    assert strip(two["attacks"][2]["stages"]) == strip(one["attacks"][2]["stages"])
    assert two["attacks"][2]["stages"][0]["images"] == round(one["clean"]["accuracy"] * 60)
    assert torch.get_num_threads() == threads  # the workers' thread count stays in the workers


@pytest.mark.cifar
def test_workers_that_could_not_run_autograd_leave_the_batches_to_this_process(trained_tiny, monkeypatch):
    """A process whose forked children PyTorch refuses autograd (see autograd_survives_fork) gets
    the same masks from its own process, and a warning that says why it is slower."""
    from training.evaluation import runner

    assert runner.autograd_survives_fork()  # this test process: plain backward passes only
    model, test = trained_tiny
    one = evaluate(model, test, "pgd:steps=3", n=40, batch_size=4, progress=False)
    # Workers only come into play with two batches or more (of the clean-correct images): batches of
    # 4 give several at the tiny model's accuracy (16 of these 40 on one CPU made a single batch of 16).
    assert round(one["clean"]["accuracy"] * one["clean"]["n"]) > 4
    monkeypatch.setattr(runner, "autograd_survives_fork", lambda threads: False)
    monkeypatch.setattr("multiprocessing.get_context", lambda *a: pytest.fail("forked workers anyway"))
    with pytest.warns(UserWarning, match="Autograd-and-Fork"):
        two = evaluate(model, test, "pgd:steps=3", n=40, batch_size=4, progress=False, workers=2)
    assert two["attacks"][0]["robust_mask"] == one["attacks"][0]["robust_mask"]


def test_the_fork_probe_sees_a_child_that_dies_or_hangs(monkeypatch):
    """The probe watches the child's exit, so an aborted or stuck child reads as "no" rather
    than leaving the evaluation waiting (as multiprocessing.Pool does for a dead worker)."""
    import os
    import signal
    import time

    from training.evaluation import runner

    monkeypatch.setattr(runner, "_probe_backward", lambda threads: os.kill(os.getpid(), signal.SIGKILL))
    assert not runner.autograd_survives_fork()
    monkeypatch.setattr(runner, "_probe_backward", lambda threads: time.sleep(30))
    started = time.monotonic()
    assert not runner.autograd_survives_fork(timeout_s=1)
    assert time.monotonic() - started < 10


@pytest.mark.cifar
def test_a_worker_that_dies_is_an_error_not_a_hang(trained_tiny, monkeypatch):
    import os

    from training.evaluation import runner

    model, test = trained_tiny
    real = runner._AttackBatches.__call__
    monkeypatch.setattr(runner._AttackBatches, "__call__",
                        lambda self, i: os._exit(9) if i == 1 and os.getpid() != parent else real(self, i))
    parent = os.getpid()
    with pytest.raises(RuntimeError, match="worker process died.*--resume"):
        evaluate(model, test, "fgsm", n=60, batch_size=8, progress=False, workers=2)


@pytest.mark.cifar
def test_an_attack_killed_mid_way_resumes_from_its_last_batch(trained_tiny):
    """AutoAttack takes hours on a CPU: a run killed during it keeps the batches it finished
    (report["partial"]), and the resumed run gives what an uninterrupted one gives."""
    model, test = trained_tiny
    attacks = "fgsm,pgd:steps=3,autoattack:steps=2:queries=10"
    whole = evaluate(model, test, attacks, n=60, batch_size=8, progress=False)

    class Killed(Exception):
        pass

    saved = []

    def die_after_two_batches_of_autoattack(report):
        saved.append(json.loads(json.dumps(report)))
        partial = report.get("partial")
        if partial and partial["attack"] == "autoattack" and len(partial["batches"]) == 2:
            raise Killed

    with pytest.raises(Killed):
        evaluate(model, test, attacks, n=60, batch_size=8, progress=False, on_update=die_after_two_batches_of_autoattack)
    left = saved[-1]
    assert [a["attack"] for a in left["attacks"]] == ["fgsm", "pgd"] and set(left["partial"]["batches"]) == {"0", "1"}
    # Until AutoAttack runs again, every save of the resumed run keeps its finished batches, and
    # a run that does not reach it hands them on.
    saved.clear()
    shorter = evaluate(model, test, "fgsm,pgd:steps=3", n=60, batch_size=8, progress=False, resume_from=left,
                       on_update=saved.append)
    assert shorter["partial"] == left["partial"] and all(s["partial"] == left["partial"] for s in saved)
    resumed = evaluate(model, test, attacks, n=60, batch_size=8, progress=False, resume_from=shorter)
    assert "partial" not in resumed
    assert [r["robust_mask"] for r in resumed["attacks"]] == [r["robust_mask"] for r in whole["attacks"]]
    aa, aa_whole = resumed["attacks"][2], whole["attacks"][2]
    assert aa["resumed_batches"] == 2 and "resumed_batches" not in aa_whole
    strip = lambda stages: [(s["attack"], s["images"], s["broken"]) for s in stages]  # noqa: E731
    assert strip(aa["stages"]) == strip(aa_whole["stages"])
    # Another batch size makes other batches: the unfinished attack starts again, and says so.
    with pytest.warns(UserWarning, match="unfinished autoattack.*starting it again"):
        again = evaluate(model, test, attacks, n=60, batch_size=16, progress=False, resume_from=left)
    assert "resumed_batches" not in again["attacks"][2]


def test_robust_mask_seeds_each_batch_so_order_and_workers_do_not_matter():
    """A random attack on a constant model: batch i's noise comes from seed + i, in any process."""
    class Noise:
        eps, norm = 0.1, "linf"

        def __call__(self, model, x, y):
            return (x + self.eps * (2 * torch.rand_like(x) - 1)).clamp(0, 1)

    class Threshold(torch.nn.Module):  # class 1 if the first pixel is above 0.5
        def forward(self, x):
            return torch.stack([0.5 - x[:, 0, 0, 0], x[:, 0, 0, 0] - 0.5], 1)

    data = ImageSet(torch.full((24, 3, 2, 2), 128, dtype=torch.uint8), torch.ones(24, dtype=torch.long))
    clean = torch.ones(24, dtype=torch.bool)
    masks = [robust_mask(Threshold(), Noise(), data, clean, 5, torch.device("cpu"), seed=3, workers=w) for w in (1, 2, 3)]
    assert all(torch.equal(m, masks[0]) for m in masks) and 0 < masks[0].sum() < 24
    other_seed = robust_mask(Threshold(), Noise(), data, clean, 5, torch.device("cpu"), seed=4)
    assert not torch.equal(other_seed, masks[0])
    with pytest.raises(ValueError, match="workers must be >= 1"):
        robust_mask(Threshold(), Noise(), data, clean, 5, torch.device("cpu"), workers=0)


@pytest.mark.cifar
def test_eps_zero_gives_clean_accuracy(trained_tiny):
    model, test = trained_tiny
    report = evaluate(model, test, "fgsm,pgd,square", eps=0.0, n=50, progress=False)
    assert all(r["accuracy"] == report["clean"]["accuracy"] for r in report["attacks"])


@pytest.mark.cifar
def test_train_mode_model_warns_and_is_restored(trained_tiny):
    model, test = trained_tiny
    model.train()
    try:
        with pytest.warns(UserWarning, match="train mode"):
            report = evaluate(model, test, "fgsm", n=20, progress=False)
        assert model.training
    finally:
        model.eval()
    assert report["clean"]["n"] == 20


@pytest.mark.cifar
@pytest.mark.slow
def test_autoattack_runs_every_stage_on_a_torchscript_model(trained_tiny, tmp_path):
    """At a small eps some images survive APGD, so FAB-T and Square run too (on TorchScript)."""
    from training.export import export_artifact, load_model

    model, test = trained_tiny
    scripted, _ = load_model(export_artifact(model, tmp_path / "m.pt", {"classes": list(CIFAR10_CLASSES)}))
    report = evaluate(scripted, test, "apgd-ce:steps=3,autoattack:steps=3:queries=30", eps=1 / 255, n=30, progress=False)
    apgd, aa = report["attacks"]
    assert 0 < aa["accuracy"] <= report["clean"]["accuracy"]
    assert aa["accuracy"] <= apgd["accuracy"] + 1 / 30


def test_an_attack_leaving_the_eps_ball_is_refused():
    class Cheat:
        eps, norm = 0.01, "linf"

        def __call__(self, model, x, y):
            return (x + 0.05).clamp(0, 1)

    data = ImageSet(torch.full((4, 3, 8, 8), 100, dtype=torch.uint8), torch.zeros(4, dtype=torch.long))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 2))
    with pytest.raises(RuntimeError, match="eps"):
        robust_mask(model, Cheat(), data, torch.ones(4, dtype=torch.bool), 4, torch.device("cpu"))


# ---------------------------------------------------------------------------------------
# The CLI
# ---------------------------------------------------------------------------------------
def _cli(*argv: str) -> int:
    from training import cli

    return cli.main(["eval", *argv])


@pytest.mark.cifar
@pytest.mark.slow
def test_cli_writes_report_curve_and_resumes(trained_tiny, cifar_root, tmp_path, capsys):
    from training.export import export_artifact

    model, _ = trained_tiny
    artifact = export_artifact(model, tmp_path / "tiny.pt", {"classes": list(CIFAR10_CLASSES), "method": "standard"})
    out = tmp_path / "eval"
    args = ["--model", str(artifact), "--data", str(cifar_root), "--attacks", "fgsm,pgd:steps=3,autoattack:steps=3:queries=20",
            "--n", "60", "--batch-size", "64", "--curve-eps", "0,4,8", "--curve-n", "30", "--out", str(out), "--no-progress"]
    assert _cli(*args) == 0
    assert {"report.json", "report.md", "robustness_curve.png"} <= {p.name for p in out.iterdir()}
    assert (out / "robustness_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    report = json.loads((out / "report.json").read_text())
    assert report["model"]["method"] == "standard" and len(report["model"]["sha256"]) == 64
    assert report["data"]["n"] == 60 and report["data"]["split"] == "test"
    clean = report["clean"]["accuracy"]
    rows = {r["attack"]: r for r in report["attacks"]}
    assert set(rows) == {"fgsm", "pgd", "autoattack"}
    assert all(0 <= r["accuracy"] <= clean for r in rows.values())
    assert rows["autoattack"]["implementation"] == "torchattacks 3.5.1"
    curve = report["curve"]
    assert curve["eps"] == pytest.approx([0, 4 / 255, 8 / 255]) and set(curve["accuracy"]) == {"fgsm", "pgd:steps=3", "worst case"}
    assert all(ys[0] >= ys[-1] for ys in curve["accuracy"].values())  # more eps, no more accuracy

    markdown = (out / "report.md").read_text()
    printed = capsys.readouterr().out
    assert markdown in printed
    assert "| attack | implementation | settings | eps | n | accuracy | seconds |" in markdown
    assert "torchattacks 3.5.1" in markdown and "worst case" in markdown and "8/255" in markdown
    # Timings depend on the CPU model, so the report names it.
    from training.runinfo import cpu_model
    assert report["environment"]["cpu"] == cpu_model() and f"device cpu ({cpu_model()})" in markdown

    assert _cli(*args, "--resume", "--no-curve") == 0
    resumed = json.loads((out / "report.json").read_text())
    assert all(r.get("resumed") for r in resumed["attacks"])
    assert [r["accuracy"] for r in resumed["attacks"]] == [r["accuracy"] for r in report["attacks"]]

    # The curve is reused too when its settings match (the PNG is not redrawn); other settings redo it.
    png_time = (out / "robustness_curve.png").stat().st_mtime_ns
    assert _cli(*args, "--resume") == 0
    again = json.loads((out / "report.json").read_text())
    assert again["curve"] == report["curve"] and again["curve_settings"]["n"] == 30
    assert (out / "robustness_curve.png").stat().st_mtime_ns == png_time
    assert _cli(*args[:-5], "--curve-n", "20", "--out", str(out), "--no-progress", "--resume") == 0
    assert json.loads((out / "report.json").read_text())["curve"]["n"] == 20


@pytest.mark.cifar
def test_an_interrupted_resume_keeps_the_curve_and_sanity_checks(trained_tiny, cifar_root, tmp_path, monkeypatch):
    """A long attack added with --resume (AutoAttack takes an hour on a CPU) may be killed: the
    report.json it leaves must still hold what the earlier run measured."""
    from training.cli import evaluate as evaluation_cli
    from training.export import export_artifact

    model, _ = trained_tiny
    artifact = export_artifact(model, tmp_path / "tiny.pt", {"classes": list(CIFAR10_CLASSES), "method": "standard"})
    out = tmp_path / "eval"
    common = ["--model", str(artifact), "--data", str(cifar_root), "--n", "40", "--curve-eps", "0,8", "--curve-n", "20",
              "--sanity", "--no-sanity-autoattack", "--out", str(out), "--no-progress"]
    assert _cli(*common, "--attacks", "fgsm") == 0
    first = json.loads((out / "report.json").read_text())
    assert first["curve"] and first["sanity"]

    real_evaluate = evaluation_cli.evaluate

    def killed_after_first_save(*args, on_update, **kwargs):
        def save_then_die(partial):
            on_update(partial)
            raise KeyboardInterrupt
        return real_evaluate(*args, on_update=save_then_die, **kwargs)

    monkeypatch.setattr(evaluation_cli, "evaluate", killed_after_first_save)
    with pytest.raises(KeyboardInterrupt):
        _cli(*common, "--attacks", "fgsm,pgd:steps=2", "--resume")
    left = json.loads((out / "report.json").read_text())
    assert [r["attack"] for r in left["attacks"]] == ["fgsm"] and left["attacks"][0]["resumed"]
    for key in ("curve", "curve_settings", "sanity", "sanity_settings"):
        assert left[key] == first[key], key
    assert left["data"]["split"] == "test" and left["data"]["source"] == str(cifar_root)


@pytest.mark.cifar
def test_cli_errors_are_actionable(trained_tiny, cifar_root, tmp_path, capsys):
    from training.export import export_artifact

    model, _ = trained_tiny
    artifact = export_artifact(model, tmp_path / "tiny.pt", {"classes": list("abc")})  # 3 names, 10 logits
    base = ["--model", str(artifact), "--data", str(cifar_root), "--out", str(tmp_path / "o"), "--no-progress"]
    assert _cli(*base, "--attacks", "pgd,bim") == 2
    assert "unknown attack 'bim'" in capsys.readouterr().err
    assert _cli(*base, "--eps", "8") == 2
    assert "pixel units" in capsys.readouterr().err
    assert _cli(*base, "--attacks", "fgsm", "--n", "10") == 2
    assert "3 classes but the data has 10" in capsys.readouterr().err
    assert _cli(*base, "--attacks", "fgsm", "--workers", "0") == 2
    assert "--workers 0: give 1 or more" in capsys.readouterr().err
    assert _cli("--model", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "o")) == 2


# ---------------------------------------------------------------------------------------
# Sanity checks (Carlini et al. 2019)
# ---------------------------------------------------------------------------------------
SANITY_FAST = dict(strong_steps=20, strong_restarts=2, square_queries=300, autoattack_steps=10, autoattack_queries=100)


@pytest.mark.cifar
@pytest.mark.slow
def test_sanity_checks_pass_on_an_honest_model(trained_tiny):
    from training.evaluation.sanity import format_checks, run_sanity_checks

    model, test = trained_tiny
    x, y = test.images[:64].float() / 255, test.labels[:64]
    checks = run_sanity_checks(model, x, y, 2 / 255, **SANITY_FAST)
    assert len(checks) == 7
    assert all(c.passed for c in checks), format_checks(checks)


class _Quantised(torch.nn.Module):
    """Rounds inputs to 8 bits: zero gradients everywhere, a textbook case of gradient masking."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(torch.round(x * 255) / 255)


@pytest.mark.cifar
def test_sanity_checks_catch_gradient_masking(trained_tiny):
    from training.evaluation.sanity import format_checks, run_sanity_checks

    model, test = trained_tiny
    x, y = test.images[:64].float() / 255, test.labels[:64]
    checks = {c.name: c for c in run_sanity_checks(_Quantised(model).eval(), x, y, 8 / 255, autoattack=False, **SANITY_FAST)}
    assert not checks["black-box (Square) no stronger than white-box"].passed, format_checks(list(checks.values()))
    assert checks["eps=0 leaves accuracy unchanged"].passed


@pytest.mark.cifar
def test_update_metadata_keeps_the_largest_clean_run_and_records_attacks(trained_tiny, cifar_root, tmp_path):
    from training.export import export_artifact, sha256_file

    model, _ = trained_tiny
    artifact = export_artifact(model, tmp_path / "tiny.pt", {"classes": list(CIFAR10_CLASSES), "method": "standard"})
    sha = sha256_file(artifact)
    common = ["--model", str(artifact), "--data", str(cifar_root), "--no-curve", "--no-progress", "--update-metadata"]
    assert _cli(*common, "--attacks", "fgsm", "--n", "200", "--out", str(tmp_path / "a")) == 0
    assert _cli(*common, "--attacks", "pgd:steps=3", "--n", "50", "--out", str(tmp_path / "b")) == 0
    meta = json.loads(artifact.with_suffix(".json").read_text())
    metrics = meta["metrics"]
    clean_200 = json.loads((tmp_path / "a" / "report.json").read_text())["clean"]["accuracy"]
    assert metrics["clean_n"] == 200 and metrics["clean_acc"] == clean_200  # not replaced by the 50-image run
    assert metrics["attack_n"] == {"fgsm": 200, "pgd_steps_3": 50} and metrics["n"] == 200
    assert 0 <= metrics["pgd_steps_3_acc"] <= 1 and metrics["split"] == "test"
    assert meta["sha256"] == sha == sha256_file(artifact)  # the model file is untouched


@pytest.mark.cifar
@pytest.mark.slow
def test_staged_autoattack_matches_torchattacks_multiattack(trained_tiny):
    """Our stage loop is MultiAttack's rule: the same images broken, the same adversarials."""
    model, test = trained_tiny
    x = test.images[:40].float().div(255)
    y = test.labels[:40]
    aa = build_attack(parse_attacks("autoattack:steps=3:queries=30")[0], 1 / 255, n_classes=10)
    ours = aa(model, x, y)
    reference = aa.build(model)(x, y)
    assert torch.equal(ours, reference)
    stages = aa.stage_log
    assert [s["attack"] for s in stages][0] == "apgd-ce"
    assert stages[0]["images"] == 40 and all(s["seconds"] >= 0 for s in stages)
    # Each stage attacks exactly what the earlier ones left robust.
    for before, after in zip(stages, stages[1:]):
        assert after["images"] == before["images"] - before["broken"]


@pytest.mark.cifar
@pytest.mark.slow
def test_autoattack_report_records_each_stage(trained_tiny):
    model, test = trained_tiny
    report = evaluate(model, test, "autoattack:steps=3:queries=30", eps=1 / 255, n=30, progress=True, batch_size=16)
    (aa,) = report["attacks"]
    stages = aa["stages"]
    assert stages[0]["attack"] == "apgd-ce"
    clean_correct = int(round(report["clean"]["accuracy"] * 30))
    assert stages[0]["images"] == clean_correct
    survivors = stages[-1]["images"] - stages[-1]["broken"]
    if len(stages) == 4:  # every stage ran: what the last one left is the robust count
        assert survivors == int(round(aa["accuracy"] * 30))


@pytest.mark.cifar
@pytest.mark.parametrize("freeze, channels_last", [(True, False), (False, True), (True, True)])
def test_optimized_model_computes_the_same_function(trained_tiny, tmp_path, freeze, channels_last):
    from training.evaluation import optimize_for_attack
    from training.export import export_artifact, load_model

    model, test = trained_tiny
    scripted, _ = load_model(export_artifact(model, tmp_path / "m.pt", {"classes": list(CIFAR10_CLASSES)}))
    x = test.images[:32].float() / 255
    fast, info = optimize_for_attack(scripted, x, freeze=freeze, channels_last=channels_last)
    assert info["frozen"] == freeze and info["channels_last"] == channels_last
    assert not fast.train().training  # always eval mode: evaluate() switches modes on what it gets
    report = evaluate(fast, test, "fgsm", eps=2 / 255, n=20, progress=False)
    assert report["attacks"][0]["n"] == 20
    x_new = test.images[32:64].float() / 255
    with torch.no_grad():
        assert torch.allclose(fast(x_new), scripted(x_new), atol=1e-4)
    # Still differentiable with respect to the input, so white-box attacks run on it.
    x_req = x_new.clone().requires_grad_(True)
    fast(x_req).sum().backward()
    assert x_req.grad is not None and x_req.grad.abs().sum() > 0


def test_freeze_refuses_a_model_that_is_not_torchscript():
    from training.evaluation import optimize_for_attack

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))
    with pytest.raises(ValueError, match="TorchScript"):
        optimize_for_attack(model, torch.rand(2, 3, 2, 2), freeze=True)


def test_cpu_model_reads_cpuinfo_and_falls_back_to_the_architecture(monkeypatch, tmp_path):
    import platform

    from training import runinfo

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9B14\n")
    real_path = runinfo.Path
    monkeypatch.setattr(runinfo, "Path", lambda p: cpuinfo if p == "/proc/cpuinfo" else real_path(p))
    assert runinfo.cpu_model() == "AMD EPYC 9B14"
    assert "AMD EPYC 9B14" in runinfo.hardware(torch.device("cpu"))
    cpuinfo.write_text("processor\t: 0\n")  # e.g. some ARM kernels: no model name
    assert runinfo.cpu_model() == (platform.processor() or platform.machine())


def _tiny_report(attacks: list[dict], environment: dict) -> dict:
    return {"model": {"path": "m.pt", "sha256": "0" * 64, "name": "m", "method": "standard"},
            "data": {"n": 10, "of": 10, "class_balanced": False, "seed": 0, "source": "d", "split": "test"},
            "eps": 8 / 255, "clean": {"n": 10, "accuracy": 0.9, "seconds": 0.1}, "environment": environment,
            "attacks": [{"attack": a["label"], "implementation": "clead", "settings": {}, "eps": 8 / 255,
                         "norm": "linf", "n": 10, "accuracy": 0.5, "seconds": 1.0, **a} for a in attacks]}


def test_resumed_attacks_keep_where_they_ran_and_the_report_says_so():
    """--resume rewrites the report's environment; the seconds of a reused attack stay tied to
    the machine that measured them."""
    from training.cli.evaluate import stamp_provenance
    from training.evaluation.report import render_markdown

    earlier = {"date": "2026-01-01T00:00:00+00:00", "device": "cpu", "cpu": "AMD EPYC", "git_commit": "a" * 40}
    now = {"date": "2026-02-01T00:00:00+00:00", "device": "cpu", "cpu": "Intel Xeon", "git_commit": "b" * 40,
           "torch": "2", "command": "clead-train eval"}
    older = {"date": "2025-12-01T00:00:00+00:00", "device": "cuda", "git_commit": "c" * 40}
    attacks = [{"label": "fgsm", "resumed": True}, {"label": "pgd"}, {"label": "cw", "resumed": True, "ran": older}]
    stamp_provenance(attacks, now, earlier)
    assert attacks[0]["ran"] == earlier and attacks[2]["ran"] == older
    assert attacks[1]["ran"] == {k: now[k] for k in ("date", "device", "cpu", "git_commit")}
    markdown = render_markdown(_tiny_report(attacks, now))
    assert "- reused from an earlier run (--resume): fgsm: 2026-01-01T00:00:00+00:00, device cpu (AMD EPYC), commit aaaaaaaaaa" in markdown
    assert "- reused from an earlier run (--resume): cw: 2025-12-01T00:00:00+00:00, device cuda, commit cccccccccc" in markdown
    assert "pgd:" not in markdown.split("| attack |")[0]  # this run's own attack is not listed as reused


def test_resume_accepts_the_reports_of_the_file_an_augmented_artifact_was_built_from(tmp_path):
    """clead-train suspicion augment writes a new file (new sha256) whose logits it checked to be
    bit-identical to the original's: the original's reports resume; another model's do not."""
    from training.cli.evaluate import _previous_report

    path = tmp_path / "report.json"
    path.write_text(json.dumps({"model": {"sha256": "a" * 64}, "attacks": []}))
    assert _previous_report(path, {"sha256": "b" * 64, "logits_from": "a" * 64})["model"]["sha256"] == "a" * 64
    with pytest.raises(ValueError, match="another model"):
        _previous_report(path, {"sha256": "b" * 64})
    with pytest.raises(ValueError, match="another model"):
        _previous_report(path, {"sha256": "b" * 64, "logits_from": "c" * 64})

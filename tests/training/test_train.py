"""The training loop, every method, resume, DDP and export, on tiny CPU runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from training import cli
from training.checkpoint import load_checkpoint, model_from_checkpoint
from training.config import TrainConfig, from_dict, validate
from training.methods import method_names, resolve
from training.train import lr_factor

REPO = Path(__file__).resolve().parents[2]

# One epoch on 512 images: AdamW with a small batch learns fastest in so few steps.
SMOKE = ["--model", "tiny_cnn", "--epochs", "1", "--limit", "512", "--batch-size", "16",
         "--optimizer", "adamw", "--lr", "0.003", "--weight-decay", "0", "--no-augment",
         "--attack-steps", "2", "--val-size", "1000", "--val-n", "1000", "--val-attack-steps", "2"]


def run_cli(*argv: str) -> int:
    return cli.main(["fit", *argv])


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.cifar
@pytest.mark.parametrize("method", [m for m in method_names() if m != "clead-fixed"])  # fixed views: below
def test_each_method_trains_and_beats_chance(method, cifar_root, tmp_path):
    out = tmp_path / method
    assert run_cli("--method", method, "--data", str(cifar_root), "--out", str(out), *SMOKE) == 0
    (m,) = metrics(out)
    # 1,000 held-out images, 10 classes: chance is 10% (std 0.95%); 15% is > 5 sigma above.
    assert m["val_n"] == 1000
    assert m["val_clean_acc"] > 0.15, m
    assert m["val_robust_acc"] <= m["val_clean_acc"]
    for name in ("config.yaml", "run.json", "summary.json", "last.pt", "best.pt"):
        assert (out / name).is_file(), name
    state = load_checkpoint(out / "best.pt")  # weights_only=True inside
    assert state["config"]["method"]["name"] == method
    assert state["git_commit"] and state["versions"]["torch"] == torch.__version__
    if method == "clead":
        assert any(k.startswith("head.") for k in state["method_extra"])  # head trained, saved
        assert {"train_contrastive", "train_ce_adv"} <= set(m)


@pytest.mark.parametrize(
    "flags, option",
    [
        (["--method", "nope"], "--method"),
        (["--method", "pgd-at", "--eps", "-0.1"], "--eps"),
        (["--method", "clead", "--tau", "0"], "--tau"),
        (["--method", "trades", "--attack-steps", "0"], "--attack-steps"),
        (["--model", "resnet9000"], "--model"),
        (["--eps", "8"], "--eps"),
    ],
)
def test_invalid_options_fail_before_data_is_loaded(flags, option, tmp_path, capsys):
    # The data path does not exist: if the option were not checked first, the error would
    # be about the data instead.
    code = run_cli(*flags, "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "run"))
    err = capsys.readouterr().err
    assert code == 2
    assert f"invalid option {option}" in err
    assert not (tmp_path / "run").exists()


def test_yaml_config_with_flags_on_top(tmp_path):
    from training.cli.fit import add_arguments, config_from_args
    import argparse

    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("method: {name: clead, tau: 0.5, loss: supcon}\nattack: {eps: 4/255, steps: 5}\nepochs: 7\n")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    cfg = resolve(config_from_args(parser.parse_args(["--config", str(cfg_file), "--epochs", "2", "--tau", "0.2"])))
    assert cfg.method.name == "clead" and cfg.method.options["loss"] == "supcon"
    assert cfg.attack.eps == pytest.approx(4 / 255) and cfg.attack.steps == 5
    assert cfg.epochs == 2 and cfg.method.options["tau"] == 0.2  # flags win
    # A config written before options were per-method (every method's options, prefixed) still loads.
    old = resolve(from_dict({"method": {"name": "trades", "trades_beta": 3.0, "clead_tau": 0.1, "clead_loss": "ntxent"}}))
    assert old.method.options == {"beta": 3.0}
    with pytest.raises(ValueError, match="unknown option"):
        resolve(from_dict({"method": {"name": "trades", "betta": 3.0}}))
    with pytest.warns(UserWarning, match="no option 'tau'"):  # another method's option is ignored, not silently
        resolve(from_dict({"method": {"name": "pgd-at", "tau": 0.2}}))
    with pytest.raises(ValueError, match="unknown key"):
        from_dict({"attack": {"epsilon": 1}})


def test_lr_schedules_peak_and_end_at_zero():
    total = 100
    one = [lr_factor(s, total, "onecycle", 0.4) for s in range(total + 1)]
    assert max(one) == pytest.approx(1.0) and one[40] == pytest.approx(1.0) and one[-1] == pytest.approx(0.0)
    cos = [lr_factor(s, total, "cosine", 0.1) for s in range(total + 1)]
    assert max(cos) == pytest.approx(1.0, abs=0.02) and cos[-1] == pytest.approx(0.0, abs=1e-6)


def _resume_args(cifar_root, out) -> list[str]:
    return ["--method", "pgd-at", "--model", "tiny_cnn", "--data", str(cifar_root), "--out", str(out),
            "--epochs", "4", "--limit", "384", "--batch-size", "32", "--attack-steps", "1",
            "--val-size", "200", "--val-n", "64", "--val-attack-steps", "2",
            "--amp", "off"]  # on a CPU with bf16, --amp auto's timed probe could pick another precision per run


@pytest.mark.cifar
@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(cifar_root, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert run_cli(*_resume_args(cifar_root, straight)) == 0

    # Same intra-op thread count as this process, so both runs do the same float arithmetic.
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen([sys.executable, "-m", "training", "fit", *_resume_args(cifar_root, killed)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not ((killed / "metrics.jsonl").is_file() and (killed / "metrics.jsonl").read_text().strip()):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "first epoch never finished"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # mid-run, possibly mid-checkpoint: the write is atomic
    proc.wait(timeout=30)
    done = len(metrics(killed))
    assert done < 4, "the run finished before it could be killed; make the test run longer"

    assert run_cli(*_resume_args(cifar_root, killed), "--resume") == 0
    a = load_checkpoint(straight / "last.pt")["model"]
    b = load_checkpoint(killed / "last.pt")["model"]
    # The epoch that was cut off is redone: the log may repeat it, but ends with epoch 4.
    assert metrics(killed)[-1]["epoch"] == 4
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
    run_info = json.loads((killed / "run.json").read_text())
    assert "--resume" not in run_info["command"] and "--resume" in run_info["resumed_with"][0]
    # A second start without --resume refuses to overwrite the run.
    assert run_cli(*_resume_args(cifar_root, killed)) == 2


@pytest.mark.cifar
@pytest.mark.slow
def test_torchrun_two_processes_stay_in_sync_and_save_once(cifar_root, tmp_path):
    out = tmp_path / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "training", "fit",
           "--method", "clead", "--model", "tiny_cnn", "--data", str(cifar_root), "--out", str(out),
           "--epochs", "2", "--limit", "256", "--batch-size", "32", "--attack-steps", "1",
           "--val-size", "200", "--val-n", "100", "--val-attack-steps", "1", "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = metrics(out)
    assert [m["epoch"] for m in lines] == [1, 2]  # written by rank 0 only, once per epoch
    assert all(m["ranks_in_sync"] for m in lines)
    assert lines[-1]["val_n"] == 100  # validation shards were reduced over both ranks
    state = load_checkpoint(out / "last.pt")
    assert len(state["rng"]) == 2  # both ranks' RNG streams, for an exact resume
    summary = json.loads((out / "summary.json").read_text())
    assert "x 2 process" in summary["hardware"]


@pytest.mark.cifar
def test_export_matches_checkpoint_in_a_fresh_process(cifar_root, tmp_path):
    run = tmp_path / "run"
    assert run_cli("--method", "standard", "--data", str(cifar_root), "--out", str(run), *SMOKE) == 0
    artifact = tmp_path / "model.pt"
    assert cli.main(["export", str(run), "--out", str(artifact), "--name", "smoke"]) == 0
    meta = json.loads(artifact.with_suffix(".json").read_text())
    assert meta["name"] == "smoke" and meta["method"] == "standard" and len(meta["classes"]) == 10
    assert meta["metrics"]["val_clean_acc"] > 0.1 and len(meta["sha256"]) == 64

    model, _ = model_from_checkpoint(run)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.save(x, tmp_path / "x.pt")
    code = (
        "import sys, torch; m = torch.jit.load(sys.argv[1]); x = torch.load(sys.argv[2]);"
        "torch.save(m(x).detach(), sys.argv[3])"
    )
    # A fresh interpreter without the project on its path: torch alone loads the artifact.
    subprocess.run([sys.executable, "-c", code, str(artifact), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
                   check=True, cwd=tmp_path, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(torch.load(tmp_path / "y.pt"), expected, rtol=1e-4, atol=1e-5)


def test_validate_accepts_defaults():
    validate(TrainConfig())
    resolve(TrainConfig())


# ---------------------------------------------------------------------------------------
# clead-fixed: views made once by `clead-train views`, then C-LEAD's objective on them
# ---------------------------------------------------------------------------------------
def _folder_dataset(root: Path, per_class: int = 40, classes: int = 4, seed: int = 0) -> Path:
    """A small ImageFolder split (train/<class>/*.png) of class-coloured noise."""
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    for c in range(classes):
        folder = root / "train" / f"c{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            img = (torch.rand(32, 32, 3, generator=g) * 128 + 32 * c).clamp(0, 255).to(torch.uint8)
            Image.fromarray(img.numpy()).save(folder / f"{i:03d}.png")
    return root


TINY_FIT = ["--model", "tiny_cnn", "--epochs", "1", "--batch-size", "16", "--optimizer", "adamw", "--lr", "0.003",
            "--val-size", "32", "--val-n", "32", "--val-attack-steps", "2"]


def test_fixed_views_are_made_once_and_train_clead_fixed(tmp_path, monkeypatch):
    import training.train
    from training.data import load_split

    monkeypatch.setenv("CLEAD_CACHE", str(tmp_path / "cache"))
    # As on a CPU with native bf16, whatever this one has: --amp auto then times a step in fp32 and
    # bf16 first, which must take the images of the (image, view) pairs, not all 6 channels.
    monkeypatch.setattr(training.train, "cpu_bf16_native", lambda: True)
    data = _folder_dataset(tmp_path / "data")
    source = tmp_path / "standard"
    assert run_cli("--method", "standard", "--data", str(data), "--out", str(source), *TINY_FIT) == 0
    views_file = tmp_path / "views.pt"
    assert cli.main(["views", "--model", str(source), "--data", str(data), "--out", str(views_file),
                     "--steps", "3", "--eps", "8/255", "--no-progress"]) == 0

    blob = torch.load(views_file, weights_only=True)
    clean = load_split(str(data), "train").images
    views = blob["images"]
    assert views.dtype == torch.uint8 and views.shape == clean.shape
    diff = (views.int() - clean.int()).abs()
    assert int(diff.max()) == 8  # inside the L-inf ball of 8/255, and the attack uses all of it
    assert float((diff > 0).float().mean()) > 0.5
    assert blob["views_acc"] <= blob["clean_acc"] and blob["steps"] == 3

    out = tmp_path / "fixed"
    assert run_cli("--method", "clead-fixed", "--fixed-views", str(views_file), "--data", str(data), "--out", str(out),
                   *TINY_FIT) == 0
    (m,) = metrics(out)
    assert {"train_contrastive", "train_ce_adv", "val_robust_acc"} <= set(m) and m["val_n"] == 32
    state = load_checkpoint(out / "best.pt")
    assert state["config"]["data"]["views"] == str(views_file)
    assert "inner" not in state["method_settings"]  # no inner maximisation to describe


def test_fixed_views_of_another_dataset_are_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CLEAD_CACHE", str(tmp_path / "cache"))
    data = _folder_dataset(tmp_path / "data", per_class=10)
    wrong = tmp_path / "wrong.pt"
    torch.save({"images": torch.zeros(7, 3, 32, 32, dtype=torch.uint8), "labels": torch.zeros(7, dtype=torch.int64)}, wrong)
    assert run_cli("--method", "clead-fixed", "--fixed-views", str(wrong), "--data", str(data),
                   "--out", str(tmp_path / "r"), *TINY_FIT) == 2
    assert "views of another dataset" in capsys.readouterr().err


@pytest.mark.parametrize("flags", [["--method", "clead-fixed"], ["--method", "clead", "--fixed-views", "x.pt"],
                                   ["--method", "clead-fixed", "--fixed-views", "missing.pt"]])
def test_fixed_views_options_are_checked_before_data_is_loaded(flags, tmp_path, capsys):
    assert run_cli(*flags, "--data", str(tmp_path / "absent"), "--out", str(tmp_path / "r")) == 2
    assert "invalid option --fixed-views" in capsys.readouterr().err


def test_clead_fixed_takes_the_view_channels_and_crops_pairs_alike():
    from training.data import random_crop_flip
    from training.methods import create_method
    from training.models import create_model

    cfg = from_dict({"method": {"name": "clead-fixed"}, "model": {"name": "tiny_cnn"}})
    method = create_method(create_model("tiny_cnn", num_classes=10), cfg)
    assert method.attack is None  # nothing is attacked online
    x = torch.rand(4, 6, 32, 32)
    assert torch.equal(method.perturb(x, torch.zeros(4, dtype=torch.long))["x_adv"], x[:, 3:])
    with pytest.raises(ValueError, match="6 channels"):
        method.perturb(x[:, :3], torch.zeros(4, dtype=torch.long))
    image = torch.rand(8, 3, 32, 32)
    pair = random_crop_flip(torch.cat([image, image], 1), 4, torch.Generator().manual_seed(1))
    assert torch.equal(pair[:, :3], pair[:, 3:]) and not torch.equal(pair[:, :3], image)

"""Export round trips: artifact -> fresh process gives the same logits; checkpoints load too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training import CIFAR10_CLASSES
from training.checkpoint import save_checkpoint
from training.export import export_artifact, load_artifact, load_model, metadata_path
from training.models import create_model

REPO_ROOT = Path(__file__).resolve().parents[2]

# Loads an artifact twice in a fresh interpreter: with torch alone (what serving does; it
# must not need this project's code) and with training.export.load_model.
FRESH = """
import sys, torch
path, inputs, out = sys.argv[1:4]
x = torch.load(inputs)
if path.endswith(".pt2"):
    plain = torch.export.load(path).module()
else:
    plain = torch.jit.load(path).eval()
with torch.no_grad():
    plain_logits = plain(x)
assert "training" not in sys.modules, "the artifact imported project code"
from training.export import load_model
model, meta = load_model(path)
with torch.no_grad():
    torch.save({"plain": plain_logits, "load_model": model(x), "training": model.training, "meta": meta}, out)
"""


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = create_model("tiny_cnn")
    # Non-trivial BatchNorm statistics, so a train-mode export would show.
    m.train()
    with torch.no_grad():
        for _ in range(3):
            m(torch.rand(32, 3, 32, 32))
    return m.eval()


def _fresh_process(path: Path, x: torch.Tensor, tmp_path: Path) -> dict:
    torch.save(x, tmp_path / "x.pt")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", FRESH, str(path), str(tmp_path / "x.pt"), str(tmp_path / "out.pt")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(tmp_path / "out.pt", weights_only=False)


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".pt", ".pt2"])
def test_artifact_round_trip_in_fresh_process(model, tmp_path, suffix):
    path = export_artifact(model, tmp_path / f"tiny{suffix}", {"classes": list(CIFAR10_CLASSES), "method": "standard"})
    x = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    got = _fresh_process(path, x, tmp_path)
    assert torch.allclose(got["plain"], expected, atol=1e-5)
    assert torch.allclose(got["load_model"], expected, atol=1e-5)
    assert got["training"] is False, "load_model must return a module in eval mode"
    meta = got["meta"]
    assert meta["classes"] == list(CIFAR10_CLASSES) and meta["method"] == "standard"
    assert meta["format"] == ("export" if suffix == ".pt2" else "torchscript")
    assert len(meta["sha256"]) == 64


def test_export_leaves_the_model_alone(model, tmp_path):
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_artifact(model, tmp_path / "m.pt", {"classes": list(CIFAR10_CLASSES)})
    assert model.training
    model.eval()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_tampered_artifact_fails_sha256_check(model, tmp_path):
    path = export_artifact(model, tmp_path / "m.pt", {"classes": list(CIFAR10_CLASSES)})
    with open(path, "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ValueError, match="sha256"):
        load_artifact(path)


def test_export_requires_classes_and_known_format(model, tmp_path):
    with pytest.raises(ValueError, match="classes"):
        export_artifact(model, tmp_path / "m.pt", {})
    with pytest.raises(ValueError, match="torchscript"):
        export_artifact(model, tmp_path / "m.onnx", {"classes": ["a"]}, fmt="onnx")
    assert not list(tmp_path.iterdir()), "a failed export must not leave files behind"


def test_torchscript_artifact_is_attackable(model, tmp_path):
    """Evaluation and the demo attack artifacts: gradients must flow through them."""
    from training.attacks import create_attack

    loaded, _ = load_model(export_artifact(model, tmp_path / "m.pt", {"classes": list(CIFAR10_CLASSES)}))
    x, y = torch.rand(8, 3, 32, 32), torch.arange(8)
    torch.manual_seed(0)
    a = create_attack("pgd", steps=3)(loaded, x, y)
    torch.manual_seed(0)
    b = create_attack("pgd", steps=3)(model, x, y)
    assert torch.allclose(a, b, atol=1e-4)


def _checkpoint_state(model) -> dict:
    return {"model": model.state_dict(), "model_name": "tiny_cnn", "model_kwargs": {}, "classes": list(CIFAR10_CLASSES),
            "mean": model.normalize.mean.flatten().tolist(), "std": model.normalize.std.flatten().tolist(),
            "config": {"method": {"name": "trades"}}, "epoch": 1}


def test_checkpoint_and_run_dir_load(model, tmp_path):
    save_checkpoint(tmp_path / "run" / "best.pt", _checkpoint_state(model))
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    for path in (tmp_path / "run" / "best.pt", tmp_path / "run"):
        loaded, meta = load_model(path)
        assert not loaded.training
        with torch.no_grad():
            assert torch.allclose(loaded(x), expected, atol=1e-6)
        assert meta["method"] == "trades" and meta["classes"] == list(CIFAR10_CLASSES)


def test_not_a_checkpoint_is_named(tmp_path):
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a clead training checkpoint"):
        load_model(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.pt")


def test_metadata_lies_beside_the_artifact(model, tmp_path):
    path = export_artifact(model, tmp_path / "sub" / "m.pt", {"classes": list(CIFAR10_CLASSES), "name": "m"})
    meta = json.loads(metadata_path(path).read_text())
    assert meta["file"] == "m.pt" and meta["num_classes"] == 10 and meta["input_size"] == [3, 32, 32]


def test_an_artifact_is_shipped_byte_for_byte_under_another_name(model, tmp_path, capsys):
    """`clead-train export ARTIFACT --out models/x.pt`: the same file (so its evaluations, which
    name its sha256, still apply), renamed in its metadata."""
    from training.cli import main

    src = export_artifact(model, tmp_path / "run" / "model.pt", {"classes": list(CIFAR10_CLASSES), "name": "C-LEAD"})
    src_meta = json.loads(metadata_path(src).read_text())
    assert main(["export", str(src), "--out", str(tmp_path / "models" / "clead.pt")]) == 0
    shipped = tmp_path / "models" / "clead.pt"
    assert shipped.read_bytes() == src.read_bytes()
    meta = json.loads(metadata_path(shipped).read_text())
    assert meta["name"] == "clead" and meta["file"] == "clead.pt" and meta["copied_from"] == str(src)
    assert meta["sha256"] == src_meta["sha256"] and meta["classes"] == src_meta["classes"]
    _, loaded = load_artifact(shipped)  # verifies the sha256 against the new metadata
    assert loaded["name"] == "clead"
    # A tampered source is refused, as is an option that only means something for a run.
    assert main(["export", str(src), "--out", str(tmp_path / "x.pt"), "--which", "last"]) == 2
    assert "copied as it is" in capsys.readouterr().err
    with open(src, "ab") as fh:
        fh.write(b"x")
    assert main(["export", str(src), "--out", str(tmp_path / "y.pt")]) == 2
    assert "sha256 does not match" in capsys.readouterr().err

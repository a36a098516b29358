"""training.curves: curves.png from a synthetic history, TensorBoard on when installed, quiet off."""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pytest
from PIL import Image

from training import curves
from training.curves import EpochObserver, TensorBoardWriter, loss_keys, read_history, render_curves


def synthetic_history(epochs: int = 6) -> list[dict]:
    """What training.train writes per epoch for C-LEAD (the keys of runs/cifar10-clead/metrics.jsonl)."""
    history = []
    for e in range(1, epochs + 1):
        history.append({
            "train_ce_adv": 2.2 - 0.1 * e, "train_ce_clean": 1.9 - 0.1 * e, "train_contrastive": 0.5 / e,
            "train_loss": 2.6 - 0.15 * e, "train_acc": 0.2 + 0.04 * e, "images_per_s": 2400.0 + e,
            "epoch_seconds": 20.0, "lr": 0.05 * min(e, 3) if e < 5 else 0.01, "val_clean_acc": 0.4 + 0.05 * e,
            "val_robust_acc": 0.25 + 0.02 * e, "val_n": 1000, "val_eps": 8 / 255, "epoch": e,
            "ranks_in_sync": True, "wall_seconds": 21.0 * e, "best": e != 4,
        })
    return history


def png_pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def test_render_curves_writes_a_png_into_the_run_folder(tmp_path):
    path = render_curves(synthetic_history(), tmp_path)
    assert path == tmp_path / "curves.png"
    pixels = png_pixels(path)
    assert pixels.shape[0] >= 300 and pixels.shape[1] >= 1000
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20  # lines in several colours, not a blank canvas
    assert not list(tmp_path.glob("*.tmp"))


def test_the_curves_depend_on_the_history(tmp_path):
    """A different history draws a different picture (the plot is of the data, not a template)."""
    a = png_pixels(render_curves(synthetic_history(), tmp_path / "a.png"))
    other = synthetic_history()
    for row in other:
        row["val_robust_acc"] = 0.9 - 0.1 * row["epoch"]
    b = png_pixels(render_curves(other, tmp_path / "b.png"))
    assert a.shape == b.shape and (a != b).any()


def test_loss_keys_are_the_methods_parts_with_the_total_first():
    history = synthetic_history(2)
    history[1]["train_kl"] = 0.3  # a part a method logs only from some epoch on
    assert loss_keys(history) == ["train_loss", "train_ce_adv", "train_ce_clean", "train_contrastive", "train_kl"]


def test_render_curves_copes_with_missing_keys_and_refuses_nothing_to_draw(tmp_path):
    # A standard (non-robust) run logs no robust accuracy; a NaN loss must not break the plot.
    history = [{"epoch": 1, "train_loss": float("nan"), "lr": 0.1}, {"epoch": 2, "train_loss": 1.0, "lr": 0.1}]
    assert render_curves(history, tmp_path).is_file()
    with pytest.raises(ValueError, match="empty"):
        render_curves([], tmp_path)


def test_read_history_skips_a_torn_last_line(tmp_path):
    lines = [json.dumps(row) for row in synthetic_history(3)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"train_loss": 1.')
    assert [row["epoch"] for row in read_history(tmp_path)] == [1, 2, 3]


def observe(run_dir, epochs: int) -> io.StringIO:
    """An observer through ``epochs`` synthetic epochs, as the training loop drives it; its log."""
    log = io.StringIO()
    observer = EpochObserver(run_dir, log=log)
    history = []
    for metrics in synthetic_history(epochs):
        history.append(metrics)
        observer.on_epoch(metrics, history)
    observer.close()
    return log


def test_observer_without_tensorboard_says_so_once_and_draws(tmp_path, monkeypatch):
    monkeypatch.setattr(TensorBoardWriter, "available", staticmethod(lambda: False))
    log = observe(tmp_path, epochs=3)
    assert log.getvalue().count("TensorBoard is off") == 1
    assert (tmp_path / "curves.png").is_file() and not (tmp_path / "tensorboard").exists()
    with pytest.raises(ImportError, match="tensorboard"):
        EpochObserver(tmp_path, tensorboard=True, log=log)


def test_observer_warns_instead_of_failing_the_run(tmp_path, monkeypatch):
    monkeypatch.setattr(TensorBoardWriter, "available", staticmethod(lambda: False))

    def broken(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(curves, "render_curves", broken)
    observer = EpochObserver(tmp_path, log=io.StringIO())
    with pytest.warns(RuntimeWarning, match="No space left"):
        observer.on_epoch(synthetic_history(1)[0], synthetic_history(1))


def test_tensorboard_scalars_round_trip(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = observe(tmp_path, epochs=4)
    assert "TensorBoard is off" not in log.getvalue()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/ce_adv", "val/clean_acc", "val/robust_acc", "run/lr"} <= tags
    assert not tags & {"run/epoch", "run/best", "val/n", "val/eps", "run/ranks_in_sync"}
    robust = events.Scalars("val/robust_acc")
    assert [e.step for e in robust] == [1, 2, 3, 4]
    assert [round(e.value, 4) for e in robust] == [round(h["val_robust_acc"], 4) for h in synthetic_history(4)]

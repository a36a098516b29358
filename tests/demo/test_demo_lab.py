"""The attack lab's compute, without Gradio."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from demo import lab
from serving.predictor import Limits
from training import CIFAR10_CLASSES

TOL = 1e-6  # float32 rounding of k/255


@pytest.fixture(scope="module")
def models(artifacts):
    return lab.load_models(artifacts["baseline"], artifacts["hardened"])


@pytest.fixture(scope="module")
def x(models, photo):
    return lab.load_upload(photo, models["baseline"].input_size)


def test_missing_artifacts_name_files_and_flags(tmp_path, artifacts):
    with pytest.raises(lab.MissingArtifactsError) as err:
        lab.load_models(tmp_path / "nope.pt", tmp_path / "also-nope.pt")
    message = str(err.value)
    assert "nope.pt" in message and "also-nope.pt" in message
    assert "--baseline" in message and "--hardened" in message
    with pytest.raises(lab.MissingArtifactsError, match="hardened"):
        lab.load_models(artifacts["baseline"], tmp_path / "missing.pt")


def test_upload_is_resized_to_model_input(x, photo):
    assert x.shape == (1, 3, 32, 32) and x.dtype == torch.float32
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    # Transparent pixels become white, not black.
    assert float(x[0, :, 0, :].mean()) > 0.99


@pytest.mark.parametrize("attack", list(lab.ATTACK_CHOICES))
@pytest.mark.parametrize("target", list(lab.TARGETS))
def test_perturbation_within_eps_and_both_models_answer(models, x, attack, target):
    eps = 8 / 255
    result = lab.run_lab(models, x, attack, eps, 3, target)
    assert set(result.outcomes) == set(lab.ROLES)
    for role, o in result.outcomes.items():
        assert o.linf <= eps + TOL
        assert 0 <= float(o.x_adv.min()) and float(o.x_adv.max()) <= 1
        # The adversarial image is exactly representable in 8 bits (what the UI shows).
        assert torch.allclose(o.x_adv * 255, (o.x_adv * 255).round(), atol=1e-4)
        assert len(o.clean) == len(o.adversarial) == lab.TOP_K
        assert all(label in models[role].classes for label, _ in o.clean + o.adversarial)
        assert sum(p for _, p in o.clean) <= 1 + TOL
        assert o.attacked_against == (role if target == "each" else target)
        assert role in o.verdict() and ("fooled" in o.verdict() or "holds" in o.verdict())
    if target != "each":  # one image for both models: a transfer attack
        assert torch.equal(result.outcomes["baseline"].x_adv, result.outcomes["hardened"].x_adv)


def test_pgd_lowers_confidence_of_the_attacked_prediction(models, x):
    result = lab.run_lab(models, x, "PGD", 8 / 255, 10, "each")
    for o in result.outcomes.values():
        label, p_clean = o.clean[0]
        # Absent from the adversarial top-5 means below its 5th entry.
        p_adv = dict(o.adversarial).get(label, o.adversarial[-1][1])
        assert p_adv < p_clean, (o.clean, o.adversarial)


def test_zero_eps_changes_nothing(models, x):
    result = lab.run_lab(models, x, "PGD", 0.0, 10, "each")
    for o in result.outcomes.values():
        assert o.linf == 0 and not o.fooled and "holds" in o.verdict()


def test_runs_are_repeatable(models, x):
    a = lab.run_lab(models, x, "PGD", 4 / 255, 5, "baseline")
    b = lab.run_lab(models, x, "PGD", 4 / 255, 5, "baseline")
    assert torch.equal(a.outcomes["baseline"].x_adv, b.outcomes["baseline"].x_adv)


def test_invalid_settings_raise(models, x):
    with pytest.raises(ValueError, match="unknown attack"):
        lab.run_lab(models, x, "nope", 8 / 255, 10, "each")
    with pytest.raises(ValueError, match="unknown target"):
        lab.run_lab(models, x, "PGD", 8 / 255, 10, "everyone")


def test_bad_uploads_give_readable_errors(tmp_path, not_an_image, too_many_pixels, photo):
    size = (3, 32, 32)
    with pytest.raises(lab.BadImageError, match="notes.png is not an image the models read"):
        lab.load_upload(not_an_image, size)
    with pytest.raises(lab.BadImageError, match="pixels, over the limit"):
        lab.load_upload(too_many_pixels, size)
    with pytest.raises(lab.BadImageError, match="MiB"):
        lab.load_upload(photo, size, Limits(max_bytes=100))
    truncated = tmp_path / "cut.jpg"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(truncated, format="JPEG")
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(lab.BadImageError, match="cut.jpg"):
        lab.load_upload(truncated, size)


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "BMP", "GIF", "PNG"])
def test_the_servers_formats_load(tmp_path, fmt):
    path = tmp_path / f"img.{fmt.lower()}"
    Image.new("RGB", (50, 40), (200, 20, 20)).save(path, format=fmt)
    x = lab.load_upload(path, (3, 32, 32))
    assert x.shape == (1, 3, 32, 32) and abs(float(x[0, 0].mean()) - 200 / 255) < 0.03


def test_an_upload_is_the_same_tensor_in_the_demo_and_the_server(photo, tmp_path):
    """One image pipeline: the demo decodes with the servers' decode_image and limits."""
    from serving.predictor import Limits as ServerLimits, decode_image

    assert lab.UPLOAD_LIMITS == ServerLimits()
    jpeg = tmp_path / "photo.jpg"
    Image.open(photo).convert("RGB").save(jpeg, quality=90)
    for path in (photo, jpeg):
        served = decode_image(path.read_bytes(), (3, 32, 32), ServerLimits())
        assert torch.equal(lab.load_upload(path, (3, 32, 32))[0], served)
    # What the server refuses, the demo refuses too (TIFF is not among the served formats).
    tiff = tmp_path / "img.tiff"
    Image.new("RGB", (50, 40)).save(tiff, format="TIFF")
    with pytest.raises(lab.BadImageError, match="img.tiff"):
        lab.load_upload(tiff, (3, 32, 32))


def test_perturbation_image_maps_eps_to_full_range():
    eps = 8 / 255
    delta = torch.tensor([-eps, 0.0, eps]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    pixels = lab.perturbation_image(delta, eps)
    assert pixels.shape == (2, 2, 3) and pixels.dtype == np.uint8
    assert pixels[0, 0].tolist() == [0, 128, 255]


def test_eps_label():
    from training.evaluation import fmt_eps

    assert lab.eps_label(8 / 255) == "8/255"
    assert lab.eps_label(0.0) == "0/255"
    # A measured L-inf distance carries float32 noise; it still reads as k/255, for every k.
    white = torch.tensor(1.0)  # float32 pixels, as the attacks produce them
    for k in range(256):
        assert lab.eps_label(float(white - torch.tensor((255 - k) / 255))) == f"{k}/255"
    assert lab.eps_label(0.5 / 255) == fmt_eps(0.5 / 255) == "0.5/255"  # off the grid: as training reports it


def test_server_mode_says_where_predictions_and_attack_run(models):
    from demo.app import model_card

    card = model_card(models, "http://127.0.0.1:8080")
    assert "http://127.0.0.1:8080" in card and "white-box attack itself runs on the local artifacts" in card
    assert "server" not in model_card(models, None)


def test_importing_the_app_loads_nothing_heavy():
    import subprocess
    import sys

    # Gradio (and the models) load in main(), not at import.
    code = "import sys, demo.app; assert 'gradio' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_gallery_without_data_says_how_to_fix(tmp_path):
    from demo.gallery import load_samples

    with pytest.raises(FileNotFoundError, match="--data"):
        load_samples(tmp_path)


@pytest.mark.cifar
def test_gallery_reads_one_test_image_per_class(tmp_path):
    from demo.gallery import default_data_dir, load_samples

    if not (default_data_dir() / "test.tar.gz").is_file():
        pytest.skip(f"no CIFAR-10 test tarball at {default_data_dir()}")
    samples = load_samples(default_data_dir(), out_dir=tmp_path)
    assert [s.label for s in samples] == list(CIFAR10_CLASSES)
    assert all(Image.open(s.path).size == (32, 32) for s in samples)


def test_app_builds_with_the_gallery_hidden_when_no_data(models):
    from demo.app import build_app

    app = build_app(models, [], gallery_note="Gallery unavailable: no data")
    assert app.analytics_enabled is False  # offline-safe: no telemetry, no version check
    config = app.get_config_file()
    gallery = next(c for c in config["components"] if c["props"].get("elem_id") == "gallery")
    assert gallery["props"]["visible"] is False
    assert any("Gallery unavailable" in str(c["props"].get("value")) for c in config["components"])


def test_model_card_shows_the_measured_headline_numbers_only():
    from demo.app import _headline_metrics

    metrics = {"clean_acc": 0.5726, "clean_n": 8000, "pgd20_acc": 0.31, "autoattack_acc": 0.281,
               "attack_n": {"pgd20": 1000, "autoattack": 1000}, "eps": 8 / 255, "wall_seconds": 1401.3}
    assert _headline_metrics(metrics) == (
        "clean 57.3% (n=8000), PGD-20 31.0% (n=1000), AutoAttack 28.1% (n=1000), at eps 8/255 on the test split")
    with_apgd = {**metrics, "apgd_t_acc": 0.3, "attack_n": {**metrics["attack_n"], "apgd_t": 1000}}
    assert "PGD-20 31.0% (n=1000), APGD-T 30.0% (n=1000), AutoAttack" in _headline_metrics(with_apgd)
    assert _headline_metrics({"val_clean_acc": 0.5}) == ""  # nothing measured on the test split yet

"""The handler's suspicion field, ``topk=all``, and the suspicion metrics, without a server."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from serving.predictor import Predictor, RequestError, parse_topk
from serving.handler_metrics import record_batch
from tests.serving.conftest import CLASSES, encode, random_image


def augmented_tiny(root: Path, seed: int, name: str) -> Path:
    """A tiny_cnn export plus the suspicion method, built with the training side's own tools."""
    from training.export import export_artifact
    from training.models import create_model
    from training.suspicion import SuspicionConfig, augment_artifact

    torch.manual_seed(seed)
    plain = export_artifact(create_model("tiny_cnn").eval(), root / f"plain-{name}.pt",
                            {"classes": CLASSES, "name": name, "version": "1", "architecture": "tiny_cnn",
                             "model_kwargs": {}})
    g = torch.Generator().manual_seed(seed)
    protos = torch.randint(0, 256, (100, 3, 32, 32), dtype=torch.uint8, generator=g)
    val = torch.randint(0, 256, (200, 3, 32, 32), dtype=torch.uint8, generator=g)
    return augment_artifact(plain, root / f"{name}.pt", protos, torch.arange(100) % 10, val,
                            SuspicionConfig(prototype_images=100, val_size=200))


@pytest.fixture(scope="module")
def scored(tmp_path_factory) -> Path:
    return augmented_tiny(tmp_path_factory.mktemp("scored"), 0, "clead")


@pytest.fixture(scope="module")
def predictor(scored) -> Predictor:
    return Predictor.from_artifact(str(scored))


def pngs(n: int) -> list[bytes]:
    return [encode(random_image(32, 32, seed=i), "PNG") for i in range(n)]


def test_topk_all_parses_and_other_words_do_not():
    assert parse_topk("all", 5, 10) == -1
    assert parse_topk(b" ALL ", 5, 10) == -1
    with pytest.raises(RequestError, match="'all'"):
        parse_topk("every", 5, 10)


def test_topk_all_returns_the_full_probability_vector(predictor):
    response = predictor.predict([{"body": pngs(1)[0]}], ["all"])[0]
    assert len(response["topk"]) == len(CLASSES)
    probs = response["probabilities"]
    assert len(probs) == len(CLASSES) and math.isclose(sum(probs), 1.0, rel_tol=1e-5)
    assert probs.index(max(probs)) == response["index"]
    plain = predictor.predict([{"body": pngs(1)[0]}], [3])[0]
    assert "probabilities" not in plain and len(plain["topk"]) == 3


def test_response_carries_a_deterministic_suspicion(predictor):
    images = pngs(8)
    first = predictor.predict([{"body": b} for b in images])
    again = predictor.predict([{"body": b} for b in images])
    alone = [predictor.predict([{"body": b}])[0] for b in images[:3]]
    for a, b in zip(first, again):
        assert 0.0 <= a["suspicion"] <= 1.0
        assert a["suspicion"] == b["suspicion"] and a["flagged"] == b["flagged"]
        assert a["flagged"] == (a["suspicion"] > 0.95)
    # Alone or in a batch: the same image gets the same score (to one calibration step of 1/200).
    for a, b in zip(first, alone):
        assert abs(a["suspicion"] - b["suspicion"]) <= 1 / 200 + 1e-9


def test_score_matches_the_unfrozen_artifact(scored, predictor):
    """Freezing for CPU must keep the method and its numbers (it is what the server runs)."""
    from serving.artifact import load_artifact
    from serving.predictor import decode_image

    module, _ = load_artifact(scored)
    images = pngs(4)
    x = torch.stack([decode_image(b, (3, 32, 32), predictor.limits) for b in images])
    with torch.no_grad():
        _, _, expected = module.suspicion(x)
    got = [r["suspicion"] for r in predictor.predict([{"body": b} for b in images])]
    assert got == pytest.approx([round(float(v), 6) for v in expected], abs=1 / 200 + 1e-6)


def test_plain_artifact_has_no_suspicion(artifacts):
    response = Predictor.from_artifact(str(artifacts["clead"])).predict([{"body": pngs(1)[0]}])[0]
    assert "suspicion" not in response and "flagged" not in response


class RecordingMetrics:
    def __init__(self):
        self.counters: dict[str, float] = {}
        self.histogram: list[float] = []

    def add_counter(self, name, value, idx=None, dimensions=None):
        self.counters[name] = self.counters.get(name, 0) + value

    def add_metric(self, name, value, unit, idx=None, dimensions=None, metric_type=None):
        assert str(metric_type).endswith("HISTOGRAM")
        if name == "Suspicion":
            self.histogram.append(value)


class _Timed:
    """What ``record_batch`` reads of a ``TimedPredictor``."""

    name = "clead"
    last = {"forward_s": 0.01, "decode_s": 0.001}


def test_metrics_count_flagged_and_scored():
    metrics = RecordingMetrics()
    responses = [{"suspicion": 0.99, "flagged": True}, {"suspicion": 0.2, "flagged": False},
                 {"code": 400, "type": "InvalidImage", "message": "bad"}]
    record_batch(metrics, _Timed(), responses)
    record_batch(metrics, _Timed(), responses[:1])
    assert metrics.counters["SuspicionScored"] == 3 and metrics.counters["SuspicionFlagged"] == 2
    assert metrics.histogram == [0.99, 0.2, 0.99]
    record_batch(None, _Timed(), responses)  # no metrics object (tests, Triton): nothing to do
    record_batch(metrics, _Timed(), [{"label": "cat"}])  # a plain artifact: no suspicion recorded
    assert metrics.counters["SuspicionScored"] == 3


def test_handler_records_metrics_through_the_context(scored):
    from serving.ts_handler import CleadHandler
    from tests.serving.conftest import FakeContext

    fake = FakeContext(scored.parent, scored.name)
    handler = CleadHandler()
    handler.initialize(fake.context)
    context = fake.for_batch([{}, {}])
    context.metrics = RecordingMetrics()
    bodies = handler.handle([{"body": b} for b in pngs(2)], context)
    assert context.metrics.counters["SuspicionScored"] == 2
    flagged = sum('"flagged": true' in body for body in bodies)
    assert context.metrics.counters["SuspicionFlagged"] == flagged
    assert len(context.metrics.histogram) == 2


def test_archive_carries_every_serving_module_the_handler_imports(scored, tmp_path):
    """The .mar runs without this project installed: its serving copy must import on its own."""
    import subprocess
    import sys
    import zipfile

    from serving.archive import build_archive

    mar = build_archive(scored, "clead", tmp_path / "store")
    root = tmp_path / "unpacked"
    with zipfile.ZipFile(mar) as archive:
        archive.extractall(root)
    # ts_handler is the archive's --handler, at its root; it imports the rest of what is packed.
    code = ("import serving, serving.predictor, serving.suspicion, serving.handler_metrics, ts_handler; "
            "assert serving.__file__.startswith(%r), serving.__file__; "
            "p = serving.predictor.Predictor.from_artifact('clead.pt'); assert p.suspicion is not None" % str(root))
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]

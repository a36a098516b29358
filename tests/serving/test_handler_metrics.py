"""The handler's metrics without a server: what the worker would hand TorchServe's frontend.

The metrics cache is TorchServe's own (``MetricsCacheYamlImpl`` over the ``metrics.yaml`` that
``clead-serve up`` writes), as the worker builds it; its ``[METRICS]`` log lines are what the
frontend parses into Prometheus metrics. A dimension mismatch would log an error instead.
"""

from __future__ import annotations

import logging
import re

import pytest
import yaml

from serving.handler_metrics import (BATCH_SIZE, DECODE_SECONDS, ERRORS, FORWARD_SECONDS, MODEL_ERROR, MODEL_METRICS,
                                     REQUESTS, TimedPredictor, error_types, metrics_config, write_metrics_config)
from tests.serving.conftest import encode, random_image

LINE = re.compile(r"\[METRICS\](?P<name>\w+)\.(?P<unit>\w+):(?P<value>[-\d.e]+)\|#(?P<dims>[^|]*)\|#type:(?P<type>\w+)")


@pytest.fixture
def metered_handler(make_handler, tmp_path):
    from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

    handler, fake = make_handler()
    cache = MetricsCacheYamlImpl(config_file_path=str(write_metrics_config(tmp_path / "metrics.yaml")))
    cache.initialize_cache()
    cache.model_name = "clead"
    fake.context.metrics = cache
    return handler, fake, cache


def emitted(caplog) -> list[dict]:
    rows = []
    for record in caplog.records:
        message = record.getMessage()
        assert "Failed to update metric" not in message, message
        match = LINE.search(message)
        if match:
            row = match.groupdict()
            row["dims"] = dict(d.split(":", 1) for d in row["dims"].split(","))
            row["value"] = float(row["value"])
            rows.append(row)
    return rows


def test_the_config_declares_every_handler_metric_with_the_default_dimensions_last():
    config = metrics_config()
    assert "Requests2XX" in {m["name"] for m in config["ts_metrics"]["counter"]}  # TorchServe's defaults kept
    declared = {m["name"]: (kind, m["dimensions"]) for kind, ms in config["model_metrics"].items() for m in ms}
    for kind, name, _, dims in MODEL_METRICS:
        assert declared[name] == (kind, [*dims, "ModelName", "Level"])
    assert yaml.safe_load(yaml.safe_dump(config)) == config


def test_a_batch_reports_requests_errors_by_type_batch_size_and_times(metered_handler, caplog):
    handler, fake, _ = metered_handler
    good = encode(random_image(40, 40), "PNG")
    data = [{"body": good}, {"body": b"not an image"}, {"body": good}, {"body": b""}]
    context = fake.for_batch([{}] * len(data))
    context.metrics.set_request_ids({i: f"r{i}" for i in range(len(data))})
    with caplog.at_level(logging.INFO, logger="ts.metrics.caching_metric"):
        handler.handle(data, context)
    rows = emitted(caplog)
    by_name: dict[str, list[dict]] = {}
    for row in rows:
        by_name.setdefault(row["name"], []).append(row)
    assert [r["value"] for r in by_name[REQUESTS]] == [4]
    assert {r["dims"]["ErrorType"]: r["value"] for r in by_name[ERRORS]} == {"UnsupportedMediaType": 1,
                                                                             "BadRequest": 1}
    assert [r["value"] for r in by_name[BATCH_SIZE]] == [2]  # the two good images shared one forward pass
    assert all(r["dims"]["ModelName"] == "clead" and r["dims"]["Level"] == "Model" for r in rows)
    forward, decode = by_name[FORWARD_SECONDS][0], by_name[DECODE_SECONDS][0]
    assert forward["type"] == decode["type"] == "HISTOGRAM" and forward["unit"] == "Seconds"
    assert 0 < forward["value"] < 30 and 0 < decode["value"] < 30


def test_a_batch_of_only_bad_requests_reports_no_forward_pass(metered_handler, caplog):
    handler, fake, _ = metered_handler
    context = fake.for_batch([{}])
    with caplog.at_level(logging.INFO, logger="ts.metrics.caching_metric"):
        handler.handle([{"body": b"junk"}], context)
    names = [r["name"] for r in emitted(caplog)]
    assert REQUESTS in names and ERRORS in names and DECODE_SECONDS in names
    assert FORWARD_SECONDS not in names and BATCH_SIZE not in names


def test_a_failing_model_counts_the_whole_batch_as_model_errors(metered_handler, caplog, monkeypatch):
    handler, fake, _ = metered_handler

    def broken(batch):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(handler.predictor, "forward", broken)
    context = fake.for_batch([{}, {}])
    good = encode(random_image(), "PNG")
    with caplog.at_level(logging.INFO, logger="ts.metrics.caching_metric"), pytest.raises(RuntimeError):
        handler.handle([{"body": good}, {"body": good}], context)
    errors = [r for r in emitted(caplog) if r["name"] == ERRORS]
    assert [(r["dims"]["ErrorType"], r["value"]) for r in errors] == [(MODEL_ERROR, 2)]


def test_without_a_metrics_cache_the_handler_still_answers(make_handler):
    handler, fake = make_handler()
    assert fake.context.metrics is None  # a Context built outside a worker
    out = handler.handle([{"body": encode(random_image(), "PNG")}], fake.for_batch([{}]))
    assert '"label"' in out[0]


def test_timed_predictor_splits_the_time_and_error_types_count(artifacts):
    predictor = TimedPredictor.from_artifact(str(artifacts["clead"]))
    responses = predictor.predict([{"body": encode(random_image(), "PNG")}, {"body": b"x"}])
    assert set(predictor.last) == {"forward_s", "decode_s"} and predictor.last["forward_s"] > 0
    assert error_types(responses) == {"UnsupportedMediaType": 1}

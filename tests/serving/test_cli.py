"""``clead-serve`` without a running server: archive contents, missing models, config.properties."""

from __future__ import annotations

import json
import zipfile

import yaml

from serving.archive import PACKAGED_MODULES, ArchiveConfig, build_archive
from serving.cli import archive_config_from, build_parser, limits_from, main, options_from
from serving.settings import Limits, RunOptions, from_handler_section
from serving.torchserve import ServerConfig, stop_instance


def test_archive_holds_everything_the_handler_needs(artifacts, tmp_path):
    config = ArchiveConfig(batch_size=4, max_batch_delay_ms=20, workers=2, limits=Limits(max_pixels=1000))
    mar = build_archive(artifacts["clead"], "clead", tmp_path, config=config)
    with zipfile.ZipFile(mar) as archive:
        names = set(archive.namelist())
        assert {"clead.pt", "clead.json", "ts_handler.py", "model-config.yaml", "MAR-INF/MANIFEST.json"} <= names
        assert {f"serving/{module}" for module in PACKAGED_MODULES} <= names
        model_config = yaml.safe_load(archive.read("model-config.yaml"))
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
    assert model_config["batchSize"] == 4 and model_config["maxBatchDelay"] == 20
    assert model_config["minWorkers"] == model_config["maxWorkers"] == 2
    assert model_config["handler"]["max_pixels"] == 1000
    assert manifest["model"]["serializedFile"] == "clead.pt" and manifest["model"]["modelVersion"] == "1"


def test_model_config_handler_section_holds_limits_and_run_options():
    section = ArchiveConfig(limits=Limits(max_pixels=1000), options=RunOptions(bf16=True)).model_config()["handler"]
    # One flat section, in the order TorchServe users have seen it, read back by the handler.
    assert list(section) == ["max_bytes", "max_pixels", "default_topk", "bf16", "optimize"]
    assert from_handler_section(section) == (Limits(max_pixels=1000), RunOptions(bf16=True))
    assert from_handler_section({"bf16": True, "unknown": 1}) == (Limits(), RunOptions(bf16=True))
    assert from_handler_section(None) == (Limits(), RunOptions())


def test_flags_default_to_the_dataclasses():
    """clead-serve's predictor flags repeat no default: unset, they give the dataclasses' own."""
    for argv in (["archive", "m.pt", "--name", "m"], ["triton"], ["up"]):
        args = build_parser().parse_args(argv)
        assert limits_from(args) == Limits() and options_from(args) == RunOptions()
    assert archive_config_from(build_parser().parse_args(["archive", "m.pt", "--name", "m"])) == ArchiveConfig()
    args = build_parser().parse_args(["up", "--max-bytes", "5", "--bf16"])
    assert archive_config_from(args).limits.max_bytes == 5 and archive_config_from(args).options.bf16


def test_archive_cli_refuses_a_tampered_artifact(artifacts, tmp_path, capsys):
    copy = tmp_path / "m.pt"
    copy.write_bytes(artifacts["clead"].read_bytes()[:-10])
    (tmp_path / "m.json").write_text(artifacts["clead"].with_suffix(".json").read_text())
    assert main(["archive", str(copy), "--name", "m", "--export-path", str(tmp_path / "store")]) == 1
    assert "sha256" in capsys.readouterr().err
    assert not (tmp_path / "store" / "m.mar").exists()


def test_up_without_shipped_models_says_how_to_get_them(tmp_path, capsys):
    assert main(["up", "--models-dir", str(tmp_path), "--workdir", str(tmp_path / "w")]) == 1
    err = capsys.readouterr().err
    assert "clead.pt" in err and "baseline.pt" in err and "make study" in err
    assert not (tmp_path / "w").exists(), "nothing may be started or written when models are missing"


def test_triton_without_models_fails_before_any_setup(tmp_path, capsys):
    assert main(["triton", "--models-dir", str(tmp_path)]) == 1
    assert "make study" in capsys.readouterr().err


def test_stop_with_nothing_running(tmp_path, capsys):
    assert main(["stop", "--workdir", str(tmp_path)]) == 0
    assert "no TorchServe running" in capsys.readouterr().out
    assert stop_instance(tmp_path) is False


def test_config_properties_bind_localhost_and_keep_security_on(tmp_path):
    props = dict(line.split("=", 1) for line in ServerConfig(upstream_port=9090).properties(tmp_path).splitlines())
    for key in ("inference_address", "management_address", "metrics_address"):
        assert props[key].startswith("http://127.0.0.1:")
    assert props["grpc_inference_address"] == props["grpc_management_address"] == "127.0.0.1"
    assert props["disable_token_authorization"] == "false"
    assert props["enable_model_api"] == "false"
    assert int(props["max_request_size"]) > Limits().max_bytes


def test_the_front_moves_torchserve_to_an_internal_port(tmp_path):
    """With the front (the default) TorchServe listens on a free loopback port behind it;
    --no-front puts TorchServe itself on the inference port."""
    from serving.torchserve import TorchServe

    server = TorchServe({}, ServerConfig(workdir=tmp_path, inference_port=8080))
    cfg = server.config
    assert cfg.front and cfg.upstream_port not in (0, 8080)
    props = dict(line.split("=", 1) for line in cfg.properties(tmp_path).splitlines())
    assert props["inference_address"] == f"http://127.0.0.1:{cfg.upstream_port}" == cfg.torchserve_inference_url
    assert cfg.inference_url == "http://127.0.0.1:8080" and cfg.upstream_port in cfg.ports()
    bare = TorchServe({}, ServerConfig(workdir=tmp_path, inference_port=8080, front=False)).config
    assert bare.torchserve_inference_url == bare.inference_url == "http://127.0.0.1:8080"
    props = dict(line.split("=", 1) for line in bare.properties(tmp_path).splitlines())
    assert props["inference_address"] == "http://127.0.0.1:8080"


def test_stop_leaves_a_reused_front_pid_alone(tmp_path):
    """server.json may outlive its processes; a recorded front pid now used by another program is not signalled."""
    import os

    from serving.torchserve import stop_front, write_record

    assert stop_front(os.getpid()) is False  # this pytest process is not a front
    write_record(tmp_path, {"pid": 2**22 + 1, "pgid": 2**22 + 1, "front_pid": os.getpid()})
    assert stop_instance(tmp_path) is False and not (tmp_path / "server.json").exists()


def test_metrics_port_speaks_prometheus_with_the_handlers_metrics(tmp_path):
    """Log mode, TorchServe's default, answers the metrics port with an empty body."""
    props = dict(line.split("=", 1) for line in ServerConfig(upstream_port=9090).properties(tmp_path / "store")
                 .splitlines())
    assert props["metrics_mode"] == "prometheus"
    assert props["metrics_config"] == str(tmp_path / "metrics.yaml")


def test_host_flags_open_only_inference_and_metrics(tmp_path, monkeypatch):
    """--host / --metrics-host (0.0.0.0 in the containers of deploy/): management and gRPC stay on loopback."""
    import subprocess

    from serving.cli import build_parser
    from serving.torchserve import TorchServe

    args = build_parser().parse_args(["up", "--host", "0.0.0.0", "--metrics-host", "0.0.0.0"])
    assert (args.host, args.metrics_host) == ("0.0.0.0", "0.0.0.0")
    assert build_parser().parse_args(["up"]).host == "127.0.0.1"  # default: this machine only
    server = TorchServe({}, ServerConfig(workdir=tmp_path, public_host="0.0.0.0", metrics_host="0.0.0.0"))
    props = dict(line.split("=", 1) for line in server.config.properties(tmp_path).splitlines())
    assert props["inference_address"].startswith("http://127.0.0.1:")  # TorchServe itself, behind the front
    assert props["metrics_address"].startswith("http://0.0.0.0:")
    assert props["management_address"].startswith("http://127.0.0.1:")
    assert props["grpc_inference_address"] == props["grpc_management_address"] == "127.0.0.1"
    (tmp_path / "logs").mkdir()
    started = []
    monkeypatch.setattr(subprocess, "Popen", lambda cmd, **kw: started.append(cmd))
    server.start_front()
    assert started[0][started[0].index("--host") + 1] == "0.0.0.0"
    bare = ServerConfig(workdir=tmp_path, front=False, public_host="0.0.0.0")
    assert dict(line.split("=", 1) for line in bare.properties(tmp_path).splitlines())[
        "inference_address"] == "http://0.0.0.0:8080"


def test_the_upstream_port_is_never_one_the_config_already_names(monkeypatch):
    """The front's upstream port is picked at start; a port the kernel hands out twice (gRPC's,
    chosen earlier and not bound yet) must not be picked again, or TorchServe cannot bind both."""
    import serving.torchserve as ts

    taken = ts.ServerConfig(grpc_inference_port=51193)
    handed_out = iter([51193, 51193, 52001])

    class FakeSocket:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def bind(self, address):
            self.port = next(handed_out)

        def getsockname(self):
            return ("127.0.0.1", self.port)

    monkeypatch.setattr(ts.socket, "socket", FakeSocket)
    server = ts.TorchServe({}, taken)
    assert server.config.upstream_port == 52001

"""The container definitions and manifests in deploy/, checked without a container daemon or a cluster.

What can be checked here: each Dockerfile copies files that exist (the shipped models
included), installs the package the way `make setup` does, and runs `clead-serve` with flags
the real CLI accepts, exposing the ports those flags choose and probing the health path on
the inference port; every manifest parses, runs the same command with ports its probes,
Service and scrape annotations agree with, and names images the Dockerfiles build. Whether
the images build and the pods start was not run here (docs/deploy.md says so).
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from serving.cli import SHIPPED, build_parser

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = {"torchserve": REPO / "deploy/docker/torchserve.Dockerfile",
               "triton": REPO / "deploy/docker/triton.Dockerfile"}
HEALTH = {"torchserve": "/health", "triton": "/v2/health/ready"}  # /health: the front's key-free endpoint
MANIFESTS = sorted((REPO / "deploy").glob("k8s/*.yaml")) + sorted((REPO / "deploy").glob("kserve/*.yaml"))
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def instructions(path: Path) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per Dockerfile instruction, continuation lines joined, comments dropped."""
    out, pending = [], ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        keyword, _, rest = pending.strip().partition(" ")
        out.append((keyword.upper(), rest.strip()))
        pending = ""
    return out


def exec_form(text: str) -> list[str]:
    value = json.loads(text)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), f"not exec form: {text}"
    return value


def container_argv(path: Path) -> list[str]:
    """ENTRYPOINT + CMD, both in exec form (so clead-serve is PID 1 and gets SIGTERM)."""
    steps = dict(instructions(path))
    return exec_form(steps["ENTRYPOINT"]) + exec_form(steps["CMD"])


def parse_cli(argv: list[str]):
    assert argv[0] == "clead-serve", argv
    return build_parser().parse_args(argv[1:])


@pytest.mark.parametrize("engine", sorted(DOCKERFILES))
def test_dockerfile_copies_existing_files_and_the_shipped_models(engine):
    steps = instructions(DOCKERFILES[engine])
    assert steps[0][0] == "FROM" and re.fullmatch(r"python:3\.\d+-slim-\w+", steps[0][1]), steps[0]
    copied = []
    for keyword, args in steps:
        if keyword == "COPY":
            *sources, _ = shlex.split(args)
            for source in sources:
                assert (REPO / source).exists(), f"{engine}: COPY {source}: no such file in the repository"
                copied.append(source.rstrip("/"))
    # The three packages (setuptools' include list) and what pyproject needs to build.
    assert {"pyproject.toml", "README.md", "training", "serving", "demo"} <= set(copied)
    models = REPO / parse_cli(container_argv(DOCKERFILES[engine])).models_dir
    assert str(models.relative_to(REPO)) in copied
    for name in SHIPPED:
        assert (models / f"{name}.pt").is_file() and (models / f"{name}.json").is_file()
    installs = [args for keyword, args in steps if keyword == "RUN" and "pip install" in args]
    assert installs and all(" -e " in args for args in installs)  # editable, as `make setup`
    if engine == "torchserve":
        assert any('".[serving]"' in args for args in installs)
        assert any("openjdk-17-jre-headless" in args for keyword, args in steps if keyword == "RUN")
    else:
        assert any("ensure_env()" in args for keyword, args in steps if keyword == "RUN")  # Triton venv baked in
    assert dict(steps).get("USER") not in (None, "root", "0")


def test_torchserve_image_runs_make_serve_command_on_all_interfaces():
    argv = container_argv(DOCKERFILES["torchserve"])
    args = parse_cli(argv)
    assert args.command == "up" and args.host == "0.0.0.0" and args.metrics_host == "0.0.0.0"
    # `make serve` = clead-serve up --inference-port $(INFERENCE_PORT) --management-port ... --metrics-port ...
    makefile = (REPO / "Makefile").read_text()
    recipe = re.search(r"^serve:.*\n\t(.+)$", makefile, re.M).group(1)
    assert "clead-serve up" in recipe
    defaults = dict(re.findall(r"^(\w+_PORT) \?= (\d+)$", makefile, re.M))
    for flag, var in (("inference_port", "INFERENCE_PORT"), ("management_port", "MANAGEMENT_PORT"),
                      ("metrics_port", "METRICS_PORT")):
        assert f"$({var})" in recipe and getattr(args, flag) == int(defaults[var])
    assert not args.no_token_auth and not args.no_front  # as `make serve`: auth on, the front on
    exposed = {int(p) for keyword, a in instructions(DOCKERFILES["torchserve"]) if keyword == "EXPOSE"
               for p in a.split()}
    assert exposed == {args.inference_port, args.metrics_port}  # management stays inside


def test_triton_image_runs_clead_serve_triton_on_all_interfaces():
    args = parse_cli(container_argv(DOCKERFILES["triton"]))
    assert args.command == "triton" and args.host == "0.0.0.0"
    exposed = {int(p) for keyword, a in instructions(DOCKERFILES["triton"]) if keyword == "EXPOSE" for p in a.split()}
    assert exposed == {args.http_port, args.grpc_port, args.metrics_port}


@pytest.mark.parametrize("engine", sorted(DOCKERFILES))
def test_healthcheck_probes_the_inference_port(engine):
    steps = dict(instructions(DOCKERFILES[engine]))
    check = steps["HEALTHCHECK"]
    command = exec_form(check[check.index("CMD") + 3:].strip())
    url = urlsplit(re.search(r"'(http://[^']+)'", command[-1]).group(1))
    args = parse_cli(container_argv(DOCKERFILES[engine]))
    port = args.inference_port if engine == "torchserve" else args.http_port
    assert (url.hostname, url.port, url.path) == ("127.0.0.1", port, HEALTH[engine])
    compile(command[-1], "healthcheck", "exec")  # the python -c snippet is valid Python


def documents() -> list[tuple[Path, dict]]:
    return [(path, doc) for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


def pod_specs() -> list[tuple[Path, dict, dict]]:
    """(file, the object, its pod spec) for every Deployment and InferenceService."""
    out = []
    for path, doc in documents():
        if doc["kind"] == "Deployment":
            out.append((path, doc, doc["spec"]["template"]["spec"]))
        elif doc["kind"] == "InferenceService":
            assert doc["apiVersion"] == "serving.kserve.io/v1beta1"
            out.append((path, doc, doc["spec"]["predictor"]))
    return out


def engine_of(container: dict) -> str:
    image = container["image"].rsplit("/", 1)[-1]
    name, _, tag = image.partition(":")
    assert tag == VERSION, f"{image}: tag the images with the project version {VERSION}"
    engine = name.removeprefix("clead-")
    assert engine in DOCKERFILES, f"{image}: no Dockerfile builds it"
    assert f"-t clead-{engine}:{VERSION}" in DOCKERFILES[engine].read_text()  # the build line documented there
    return engine


def port_number(container: dict, port) -> int:
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container["ports"] if "name" in p}
    assert port in named, f"port {port!r} is not a container port of {container['name']}"
    return named[port]


def test_manifests_parse_and_cover_both_kinds():
    kinds = {(path.parent.name, doc["kind"]) for path, doc in documents()}
    assert {("k8s", "Deployment"), ("k8s", "Service"), ("kserve", "InferenceService")} <= kinds
    assert {engine_of(c) for _, _, spec in pod_specs() for c in spec["containers"]} == set(DOCKERFILES)


@pytest.mark.parametrize("index", range(len(pod_specs())))
def test_containers_run_the_cli_and_probe_its_ports(index):
    path, doc, spec = pod_specs()[index]
    (container,) = spec["containers"]
    engine = engine_of(container)
    entrypoint = exec_form(dict(instructions(DOCKERFILES[engine]))["ENTRYPOINT"])
    args = parse_cli(entrypoint + [str(a) for a in container["args"]])
    assert args.command == {"torchserve": "up", "triton": "triton"}[engine] and args.host == "0.0.0.0"
    serving_port = args.inference_port if engine == "torchserve" else args.http_port
    declared = {p["containerPort"] for p in container["ports"]}
    assert serving_port == container["ports"][0]["containerPort"]  # KServe routes to the first port
    assert args.metrics_port in declared and declared <= {serving_port, args.metrics_port, getattr(args, "grpc_port", 0)}
    if engine == "torchserve":
        assert args.metrics_host == "0.0.0.0" and args.no_token_auth  # keys would differ per replica
    probes = [container[k] for k in ("startupProbe", "readinessProbe", "livenessProbe") if k in container]
    assert len(probes) >= 2
    for probe in probes:
        assert port_number(container, probe["httpGet"]["port"]) == serving_port
        assert probe["httpGet"]["path"] in (HEALTH[engine], "/v2/health/live")
    annotations = (doc["spec"]["template"]["metadata"] if doc["kind"] == "Deployment" else doc["metadata"])["annotations"]
    scrape_port = annotations.get("prometheus.io/port") or annotations.get("prometheus.kserve.io/port")
    assert int(scrape_port) == args.metrics_port
    for mount in container.get("volumeMounts", []):
        assert mount["name"] in {v["name"] for v in spec.get("volumes", [])}


def test_services_select_their_deployment_and_target_its_ports():
    deployments = {doc["metadata"]["name"]: doc for _, doc in documents() if doc["kind"] == "Deployment"}
    services = [doc for _, doc in documents() if doc["kind"] == "Service"]
    assert {s["metadata"]["name"] for s in services} == set(deployments)
    for service in services:
        deployment = deployments[service["metadata"]["name"]]
        template = deployment["spec"]["template"]
        assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
        assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
        (container,) = template["spec"]["containers"]
        for port in service["spec"]["ports"]:
            assert port_number(container, port["targetPort"]) == port["port"]


def test_alert_rules_use_metrics_the_servers_export():
    from serving.handler_metrics import MODEL_METRICS, metrics_config

    rules = [r for g in yaml.safe_load((REPO / "deploy/prometheus/alerts.yaml").read_text())["groups"]
             for r in g["rules"]]
    config = metrics_config()
    torchserve = {m["name"] for kind in config["ts_metrics"].values() for m in kind}
    histograms = {name for kind, name, _, _ in MODEL_METRICS if kind == "histogram"}
    torchserve |= {name for _, name, _, _ in MODEL_METRICS} | {f"{h}_bucket" for h in histograms}
    # Triton's, as scraped from `clead-serve triton` (tests/serving/test_servers.py checks two of them).
    triton = {"nv_inference_request_success", "nv_inference_request_failure", "nv_inference_request_duration_us",
              "nv_inference_request_summary_us"}
    assert len(rules) >= 4
    for rule in rules:
        assert {"alert", "expr", "labels", "annotations"} <= set(rule)
        names = set(re.findall(r"\b(Clead\w+|ts_\w+|nv_\w+|Requests\dXX)\b", rule["expr"]))
        assert names and names <= torchserve | triton, (rule["alert"], names - torchserve - triton)
        assert rule["expr"].count("(") == rule["expr"].count(")")

"""``clead-serve``: serve the exported models with TorchServe or Triton, and query them.

    clead-serve up        build archives of the shipped models, run TorchServe (Ctrl-C stops)
    clead-serve stop      stop a TorchServe left running
    clead-serve archive   build one .mar from an exported artifact
    clead-serve triton    serve the same artifacts with PyTriton (own venv, made on first use)
    clead-serve predict   send images to either engine and print the top-k
    clead-serve redteam   black-box attack on a running server, through HTTP only
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

# Torch-free: the flags' defaults come from the dataclasses themselves without slowing every command
# (tests/serving/test_layout.py checks that importing this module loads no torch).
from serving.archive import ArchiveConfig
from serving.settings import Limits, RedteamConfig, RunOptions, TritonServeConfig
from serving.supervisor import RestartPolicy
from serving.torchserve import ServerConfig

SERVER, ARCHIVE, TRITON, REDTEAM, RESTART = ServerConfig(), ArchiveConfig(), TritonServeConfig(), RedteamConfig(), RestartPolicy()

DEFAULT_MODELS_DIR = Path("models/cifar10")
SHIPPED = ("clead", "baseline")
DEFAULT_WORKDIR = Path("runs/serve")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args, argv) or 0
    except KeyboardInterrupt:
        return 130
    except (RuntimeError, FileNotFoundError, ValueError) as exc:
        print(f"clead-serve {args.command}: error: {exc}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clead-serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for add_command in (add_up_command, add_stop_command, add_archive_command, add_triton_command,
                        add_predict_command, add_redteam_command):
        add_command(sub)
    return parser


def add_up_command(sub: argparse._SubParsersAction) -> None:
    """``up``: build the archives and run TorchServe (behind the front) in the foreground."""
    up = sub.add_parser("up", help="serve the shipped models with TorchServe in the foreground")
    add_model_args(up)
    up.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="config, logs, key file, model store")
    up.add_argument("--inference-port", type=int, default=SERVER.inference_port,
                    help="where clients send predictions (the front's port; TorchServe's own with --no-front)")
    up.add_argument("--host", default=SERVER.public_host,
                    help="address the inference port listens on (0.0.0.0 in a container); TorchServe's "
                         "management and gRPC ports always stay on 127.0.0.1")
    up.add_argument("--metrics-host", default=SERVER.metrics_host,
                    help="address the metrics port listens on (0.0.0.0 for a Prometheus outside the container)")
    up.add_argument("--management-port", type=int, default=SERVER.management_port)
    up.add_argument("--metrics-port", type=int, default=SERVER.metrics_port)
    up.add_argument("--grpc-inference-port", type=int, default=SERVER.grpc_inference_port)
    up.add_argument("--grpc-management-port", type=int, default=SERVER.grpc_management_port)
    up.add_argument("--no-front", action="store_true",
                    help="let TorchServe listen on --inference-port itself, without the small HTTP front that "
                         "relabels form-encoded images (then curl --data-binary needs a Content-Type header)")
    up.add_argument("--upstream-port", type=int, default=SERVER.upstream_port,
                    help="TorchServe's own inference port behind the front, on 127.0.0.1 (default: a free one)")
    up.add_argument("--no-token-auth", action="store_true",
                    help="turn TorchServe token authorization off (all APIs, management included)")
    up.add_argument("--token-expiration-min", type=int, default=SERVER.token_expiration_min)
    add_archive_args(up)
    up.add_argument("--timeout", type=float, default=RESTART.ready_timeout_s, help="seconds to wait for the models to answer")
    up.add_argument("--detach", action="store_true", help="return once ready; stop later with `clead-serve stop`")
    up.add_argument("--max-restarts", type=int, default=RESTART.max_restarts,
                    help="restarts of a dead front or TorchServe allowed within --restart-window; then exit 1")
    up.add_argument("--restart-window", type=float, default=RESTART.window_s, help="seconds")
    up.set_defaults(func=cmd_up)


def add_stop_command(sub: argparse._SubParsersAction) -> None:
    """``stop``: stop the TorchServe started from a workdir."""
    stop = sub.add_parser("stop", help="stop the TorchServe started from --workdir")
    stop.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    stop.set_defaults(func=cmd_stop)


def add_archive_command(sub: argparse._SubParsersAction) -> None:
    """``archive``: one .mar from an exported artifact."""
    archive = sub.add_parser("archive", help="build a TorchServe .mar from an exported artifact")
    archive.add_argument("artifact", type=Path)
    archive.add_argument("--name", required=True)
    archive.add_argument("--version", default=None, help="default: the metadata's version, else 1.0")
    archive.add_argument("--export-path", type=Path, default=DEFAULT_WORKDIR / "model_store")
    add_archive_args(archive)
    archive.set_defaults(func=cmd_archive)


def add_triton_command(sub: argparse._SubParsersAction) -> None:
    """``triton``: the same models under Triton (PyTriton)."""
    triton = sub.add_parser("triton", help="serve the models with Triton (PyTriton), dynamic batching")
    add_model_args(triton)
    triton.add_argument("--host", default=TRITON.host)
    triton.add_argument("--http-port", type=int, default=TRITON.http_port)
    triton.add_argument("--grpc-port", type=int, default=TRITON.grpc_port)
    triton.add_argument("--metrics-port", type=int, default=TRITON.metrics_port)
    triton.add_argument("--max-batch-size", type=int, default=TRITON.max_batch_size)
    triton.add_argument("--max-queue-delay-us", type=int, default=TRITON.max_queue_delay_us)
    triton.add_argument("--max-restarts", type=int, default=RESTART.max_restarts,
                        help="restarts of a Triton that died allowed within --restart-window; then exit 1")
    triton.add_argument("--restart-window", type=float, default=RESTART.window_s, help="seconds")
    add_limit_args(triton)
    triton.set_defaults(func=cmd_triton)


def add_predict_command(sub: argparse._SubParsersAction) -> None:
    """``predict``: classify image files with a running server."""
    predict = sub.add_parser("predict", help="classify images with a running server")
    predict.add_argument("images", nargs="+", type=Path)
    predict.add_argument("--engine", choices=("torchserve", "triton"), default="torchserve")
    predict.add_argument("--url", default=None, help="default http://127.0.0.1:8080 (TorchServe) / :8000 (Triton)")
    predict.add_argument("--model", default="clead")
    predict.add_argument("--topk", type=int, default=None)
    predict.add_argument("--key", default=None, help="TorchServe inference key (default: read --key-file)")
    predict.add_argument("--key-file", type=Path, default=DEFAULT_WORKDIR / "key_file.json")
    predict.add_argument("--json", action="store_true", help="print one JSON response per line")
    predict.set_defaults(func=cmd_predict)


def add_redteam_command(sub: argparse._SubParsersAction) -> None:
    """``redteam``: a bounded black-box attack on a running server, over HTTP."""
    red = sub.add_parser("redteam", help="black-box (query) attack on a running server through its HTTP API")
    red.add_argument("--engine", choices=("torchserve", "triton"), default=REDTEAM.engine,
                     help="what serves --url: TorchServe (clead-serve up) or Triton (clead-serve triton, "
                          "KServe v2 over HTTP)")
    red.add_argument("--url", default=None, help="default http://127.0.0.1:8080 (TorchServe) / :8000 (Triton)")
    red.add_argument("--metrics-url", default=None,
                     help="the server's Prometheus metrics, e.g. http://127.0.0.1:8082/metrics (clead-serve up) or "
                          ":8002/metrics (clead-serve triton): reports its images per forward pass during the attack; "
                          "not measured without it. Loopback only, as --url")
    red.add_argument("--model", default=REDTEAM.model)
    red.add_argument("--attack", default=REDTEAM.attack, choices=("square", "rays"),
                     help="square (score-based) or rays (decision-based: labels only); both L-inf")
    red.add_argument("--eps", default="8/255", help="L-inf radius, e.g. 8/255")
    red.add_argument("--queries", type=int, default=REDTEAM.queries, help="query budget per image")
    red.add_argument("--n", type=int, default=REDTEAM.n, help="CIFAR-10 test images attacked")
    red.add_argument("--seed", type=int, default=REDTEAM.seed)
    red.add_argument("--concurrency", type=int, default=REDTEAM.concurrency, help="HTTP requests in flight at once")
    red.add_argument("--chunk", type=int, default=REDTEAM.chunk, help="images attacked together")
    red.add_argument("--p-init", type=float, default=REDTEAM.p_init,
                     help="Square's initial share of pixels changed (0.8: AutoAttack's setting, and torchattacks' "
                          "default; measured on 18 images x 100 queries of the baseline: 0.05 fooled 22%%, 0.3 and 0.8 44%%, 0.8 in fewer queries)")
    red.add_argument("--max-seconds", type=float, default=REDTEAM.max_seconds, help="wall-time budget of the run")
    red.add_argument("--allow-remote", action="store_true", help="permit a non-loopback --url")
    red.add_argument("--data", type=Path, default=Path("../shared/data/cifar10"), help="folder with test.tar.gz")
    red.add_argument("--artifact", type=Path, default=None,
                     help="local artifact for the white-box APGD comparison (default: --models-dir/<model>.pt)")
    red.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    red.add_argument("--whitebox-steps", type=int, default=REDTEAM.whitebox_steps, help="APGD-CE steps; 0 skips the comparison")
    red.add_argument("--key", default=None, help="TorchServe inference key (default: read --key-file); Triton has none")
    red.add_argument("--key-file", type=Path, default=DEFAULT_WORKDIR / "key_file.json")
    red.add_argument("--out", type=Path, default=None, help="default runs/redteam-<model>")
    red.set_defaults(func=cmd_redteam)


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR,
                        help="folder with the shipped clead.pt/.json and baseline.pt/.json")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=ARTIFACT",
                        help="serve ARTIFACT as NAME instead of the shipped models (repeatable)")


def add_archive_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, default=ARCHIVE.batch_size)
    parser.add_argument("--max-batch-delay-ms", type=int, default=ARCHIVE.max_batch_delay_ms)  # see the sweep there
    parser.add_argument("--workers", type=int, default=ARCHIVE.workers, help="worker processes per model")
    add_limit_args(parser)


def add_limit_args(parser: argparse.ArgumentParser) -> None:
    """The predictor's flags: two of its Limits and one of its RunOptions (serving/settings.py)."""
    parser.add_argument("--max-bytes", type=int, default=Limits.max_bytes, help="largest image file accepted")
    parser.add_argument("--max-pixels", type=int, default=Limits.max_pixels, help="largest width*height accepted")
    parser.add_argument("--bf16", action="store_true", default=RunOptions.bf16, help="bf16 autocast on CUDA")


def limits_from(args: argparse.Namespace) -> Limits:
    return Limits(max_bytes=args.max_bytes, max_pixels=args.max_pixels)


def options_from(args: argparse.Namespace) -> RunOptions:
    return RunOptions(bf16=args.bf16)


def archive_config_from(args: argparse.Namespace):
    from serving.archive import ArchiveConfig

    return ArchiveConfig(batch_size=args.batch_size, max_batch_delay_ms=args.max_batch_delay_ms,
                         workers=args.workers, limits=limits_from(args), options=options_from(args))


def resolve_models(args: argparse.Namespace) -> dict[str, Path]:
    """``--model NAME=PATH`` pairs, or the shipped models; a missing file is a clear error."""
    if args.model:
        models = {}
        for spec in args.model:
            name, sep, path = spec.partition("=")
            if not sep or not name or not path:
                raise ValueError(f"--model wants NAME=ARTIFACT, got {spec!r}")
            models[name] = Path(path)
    else:
        models = {name: args.models_dir / f"{name}.pt" for name in SHIPPED}
    missing = [str(p) for path in models.values() for p in (path, path.with_suffix(".json")) if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            "missing model file(s): " + ", ".join(missing) + ". The shipped models come from training: "
            "run `make study STUDY_ARGS=\"--only Standard,C-LEAD\"` (it trains, selects and exports baseline and "
            "clead into models/cifar10/: minutes on a GPU, many hours on a CPU), "
            "or serve your own export with --model NAME=path/to/model.pt"
        )
    return models


def cmd_up(args: argparse.Namespace, argv: list[str]) -> int:
    from serving.torchserve import ServerConfig, TorchServe

    models = resolve_models(args)
    config = ServerConfig(
        workdir=args.workdir, inference_port=args.inference_port, management_port=args.management_port,
        metrics_port=args.metrics_port, grpc_inference_port=args.grpc_inference_port,
        grpc_management_port=args.grpc_management_port, token_auth=not args.no_token_auth,
        token_expiration_min=args.token_expiration_min, archive=archive_config_from(args),
        front=not args.no_front, upstream_port=args.upstream_port,
        public_host=args.host, metrics_host=args.metrics_host,
    )
    server = TorchServe(models, config)
    print(f"building archives and starting TorchServe in {server.workdir} ...", flush=True)
    # make may hand us SIGTERM/SIGHUP instead of SIGINT, and a process started as a shell's
    # background job inherits SIGINT *ignored*: re-arm all three so Ctrl-C always stops cleanly.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    server.start(timeout_s=args.timeout)
    print_ready(server)
    if args.detach:
        print("running in the background; stop it with `make stop` (clead-serve stop)")
        return 0
    from serving.supervisor import RestartPolicy, Supervisor

    code = 0
    try:
        print("serving; press Ctrl-C to stop", flush=True)
        # Restarts a dead front or TorchServe; returns only once the restart budget is spent.
        code = Supervisor(server, RestartPolicy(max_restarts=args.max_restarts, window_s=args.restart_window,
                                                ready_timeout_s=args.timeout)).run()
        print("too many restarts; stopping the rest ...", flush=True)
    except KeyboardInterrupt:
        print("\nstopping TorchServe ...", flush=True)
    finally:
        server.stop()
    for what, proc in (("TorchServe", server.process), ("the front", server.front)):
        if proc is not None and proc.returncode not in (0, None, -signal.SIGTERM, 143):
            print(f"{what} exited with code {proc.returncode}; see {server.workdir / 'logs'}")
    print("stopped")
    return code


def _interrupt(signum: int, frame) -> None:
    raise KeyboardInterrupt


def print_ready(server) -> None:
    from serving.torchserve import read_keys, sample_png

    sample = server.workdir / "sample.png"
    sample.write_bytes(sample_png())
    cfg = server.config
    auth = ""
    if cfg.token_auth:
        auth = f' -H "Authorization: Bearer {read_keys(server.workdir)["inference"]}"'
    # Without the front, TorchServe decodes curl's default form content type and loses the image.
    content_type = "" if cfg.front else " -H 'Content-Type: application/octet-stream'"
    print("\nTorchServe is ready; try:")
    for name in sorted(server.models):
        print(f"  curl --data-binary @{sample}{content_type}{auth} -H 'X-TopK: 3' {cfg.inference_url}/predictions/{name}")
    program = sys.argv[0] if Path(sys.argv[0]).name == "clead-serve" else "clead-serve"
    print(f"  {program} predict --url {cfg.inference_url} --model clead --key-file {server.workdir / 'key_file.json'} {sample}")
    if cfg.front:
        print(f"{cfg.inference_url} is a small HTTP front (serving/front.py) relaying to TorchServe's inference API "
              f"on {cfg.torchserve_inference_url}: it passes every request unchanged, except that a form-encoded "
              "image (curl --data-binary's default) is relabelled application/octet-stream; --no-front turns it off")
    else:
        print("no front (--no-front): send images with a Content-Type (as above), curl -T or -F data=@file")
    if cfg.token_auth:
        print(f"keys (inference, management, token API) are in {server.workdir / 'key_file.json'};"
              " they expire after --token-expiration-min minutes")
    else:
        print("token authorization is OFF (--no-token-auth): anyone on this machine can call every API")


def cmd_stop(args: argparse.Namespace, argv: list[str]) -> int:
    from serving.torchserve import stop_instance

    if stop_instance(args.workdir):
        print(f"stopped the TorchServe of {args.workdir}")
    else:
        print(f"no TorchServe running from {args.workdir}")
    return 0


def cmd_archive(args: argparse.Namespace, argv: list[str]) -> int:
    from serving.archive import build_archive

    mar = build_archive(args.artifact, args.name, args.export_path, args.version, archive_config_from(args))
    print(mar)
    return 0


def cmd_triton(args: argparse.Namespace, argv: list[str]) -> int:
    from serving.tritonenv import has_pytriton, reexec_in_env

    models = resolve_models(args)
    if not has_pytriton():
        if os.environ.get("CLEAD_IN_TRITON_ENV"):
            raise RuntimeError("PyTriton is missing even in the Triton environment; delete .venv-triton and retry")
        reexec_in_env(["triton", *argv[1:]] if argv and argv[0] == "triton" else argv)
    from serving.triton import TritonServeConfig, serve

    config = TritonServeConfig(
        host=args.host, http_port=args.http_port, grpc_port=args.grpc_port, metrics_port=args.metrics_port,
        max_batch_size=args.max_batch_size, max_queue_delay_us=args.max_queue_delay_us, limits=limits_from(args),
        options=options_from(args),
    )

    def ready() -> None:
        print(f"Triton is ready at http://{args.host}:{args.http_port} serving {', '.join(models)}; "
              "Ctrl-C stops it", flush=True)

    from serving.supervisor import RestartPolicy, keep_running

    # serve() raises RuntimeError when Triton dies; it is started again (models reloaded) within the budget.
    code = keep_running(lambda: serve(models, config, ready=ready), "Triton",
                        RestartPolicy(max_restarts=args.max_restarts, window_s=args.restart_window))
    print("Triton stopped" if code == 0 else "Triton died too often; stopped", flush=True)
    return code


def cmd_predict(args: argparse.Namespace, argv: list[str]) -> int:
    from serving.client import PredictionError, TorchServeClient, TritonClient, format_prediction

    if args.engine == "triton":
        from serving.tritonenv import has_pytriton, reexec_in_env

        if not has_pytriton() and not os.environ.get("CLEAD_IN_TRITON_ENV"):
            reexec_in_env(argv)
        client = TritonClient(args.url or "127.0.0.1:8000")
    else:
        key_file = args.key_file if args.key_file and args.key_file.is_file() else None
        client = TorchServeClient(args.url or "http://127.0.0.1:8080", key=args.key, key_file=key_file)
    failures = 0
    for image in args.images:
        try:
            response = client.predict(image, model=args.model, topk=args.topk)
        except PredictionError as err:
            failures += 1
            body = err.body if isinstance(err.body, dict) else {"code": err.status, "message": str(err.body)}
            print(json.dumps({"image": str(image), **body}) if args.json else f"{image}: error {err}",
                  file=sys.stdout if args.json else sys.stderr)
            continue
        print(json.dumps({"image": str(image), **response}) if args.json else format_prediction(str(image), response))
    return 1 if failures else 0


def redteam_config_from(args: argparse.Namespace):
    from serving.redteam import RedteamConfig

    num, sep, den = args.eps.partition("/")
    eps = float(num) / float(den) if sep else float(num)
    url = args.url or ("http://127.0.0.1:8000" if args.engine == "triton" else "http://127.0.0.1:8080")
    return RedteamConfig(url=url, model=args.model, engine=args.engine, metrics_url=args.metrics_url,
                         attack=args.attack, eps=eps, queries=args.queries, n=args.n, seed=args.seed,
                         concurrency=args.concurrency, chunk=args.chunk, max_seconds=args.max_seconds,
                         allow_remote=args.allow_remote, whitebox_steps=args.whitebox_steps, p_init=args.p_init)


def redteam_engine(args: argparse.Namespace, config):
    """The engine ``config`` attacks: TorchServe's inference API (with its key) or Triton's KServe v2."""
    from serving.redteam import HTTPEngine, TritonEngine

    if config.engine == "triton":
        return TritonEngine(config.url, config.model, timeout=config.timeout)
    key_file = args.key_file if args.key_file and args.key_file.is_file() else None
    return HTTPEngine(config.url, config.model, key=args.key, key_file=key_file, timeout=config.timeout)


def cmd_redteam(args: argparse.Namespace, argv: list[str]) -> int:
    import shlex

    from serving.redteam import check_url, format_table, load_test_images, model_classes, run_redteam, write_report

    config = redteam_config_from(args)
    check_url(config.url, config.allow_remote)  # before loading anything
    if config.metrics_url:
        check_url(config.metrics_url, config.allow_remote)
    if config.engine == "triton":
        from serving.tritonenv import has_pytriton, reexec_in_env

        if not has_pytriton() and not os.environ.get("CLEAD_IN_TRITON_ENV"):
            reexec_in_env(argv)  # tritonclient lives in the Triton environment
    artifact = args.artifact or args.models_dir / f"{args.model}.pt"
    classes = model_classes(artifact)  # the labels' order; the server does not list its classes
    if not artifact.is_file():
        print(f"no local artifact {artifact}: skipping the white-box comparison", file=sys.stderr)
        artifact = None
    clean, labels, _ = load_test_images(args.data, config.n, config.seed, classes)
    report = run_redteam(config, redteam_engine(args, config), clean, labels, artifact)
    out = write_report(report, args.out or Path(f"runs/redteam-{args.model}"),
                       command="clead-serve " + shlex.join(argv))
    print(format_table([report]))
    print(f"wrote {out / 'report.json'} and {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``clead-serve redteam``: bounds, loopback refusal, and a run against a real TorchServe."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from serving.cli import main as cli_main
from serving.predictor import Predictor
from serving.redteam import (RedteamConfig, RemoteClassifier, check_url, format_table, load_test_images,
                             model_classes, png_bytes, roc_auc, run_redteam, to_uint8, write_report)

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "models" / "cifar10"


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080", "http://localhost:8080", "127.0.0.1:8000",
                                 "http://[::1]:8080"])
def test_loopback_urls_are_accepted(url):
    assert check_url(url, allow_remote=False) == url


@pytest.mark.parametrize("url", ["http://10.1.2.3:8080", "http://192.168.0.7", "https://8.8.8.8/"])
def test_remote_urls_are_refused_without_the_flag(url):
    with pytest.raises(ValueError, match="--allow-remote"):
        check_url(url, allow_remote=False)
    assert check_url(url, allow_remote=True) == url


def test_cli_refuses_a_remote_url_before_sending_anything(capsys):
    assert cli_main(["redteam", "--url", "http://10.1.2.3:8080", "--n", "1"]) == 1
    assert "--allow-remote" in capsys.readouterr().err


def test_cli_refuses_a_remote_triton_or_metrics_url_before_sending_anything(capsys):
    assert cli_main(["redteam", "--engine", "triton", "--url", "http://10.1.2.3:8000", "--n", "1"]) == 1
    assert "--allow-remote" in capsys.readouterr().err
    assert cli_main(["redteam", "--url", "http://127.0.0.1:8080", "--metrics-url", "http://10.1.2.3:8082/metrics",
                     "--n", "1"]) == 1
    assert "--allow-remote" in capsys.readouterr().err


def test_roc_auc():
    assert roc_auc([0, 1, 2], [3, 4]) == 1.0
    assert roc_auc([3, 4], [0, 1, 2]) == 0.0
    assert roc_auc([1, 1], [1, 1]) == 0.5
    assert roc_auc([], [1]) is None


def cifar_like_archive(root: Path, classes: tuple[str, ...], per_class: int = 2) -> Path:
    """A test.tar.gz laid out as the shared CIFAR-10's: cifar10/test/<class>/<n>.png."""
    import io
    import tarfile

    from PIL import Image

    with tarfile.open(root / "test.tar.gz", "w:gz") as tar:
        for c, name in enumerate(classes):
            for i in range(per_class):
                buf = io.BytesIO()
                Image.new("RGB", (32, 32), (c * 20, i, 0)).save(buf, format="PNG")
                info = tarfile.TarInfo(f"cifar10/test/{name}/{i:04d}.png")
                info.size = len(buf.getvalue())
                tar.addfile(info, io.BytesIO(buf.getvalue()))
    return root


def test_labels_follow_the_models_class_order(tmp_path):
    root = cifar_like_archive(tmp_path, ("cat", "dog", "ship"))
    x, labels, names = load_test_images(root, 6, classes=["ship", "cat", "dog"])
    assert x.shape == (6, 3, 32, 32) and x.dtype == torch.uint8
    order = {"ship": 0, "cat": 1, "dog": 2}
    assert labels.tolist() == [order[Path(n).parent.name] for n in names]
    # Red in the pixels says which folder an image came from (c * 20 in the archive's order).
    assert [int(img[0, 0, 0]) // 20 for img in x] == [("cat", "dog", "ship").index(Path(n).parent.name) for n in names]


def test_without_metadata_labels_are_the_sorted_class_folders(tmp_path):
    root = cifar_like_archive(tmp_path, ("truck", "airplane", "cat"))
    _, labels, names = load_test_images(root, 6)
    assert labels.tolist() == [["airplane", "cat", "truck"].index(Path(n).parent.name) for n in names]


def test_a_class_the_model_lacks_is_refused(tmp_path):
    root = cifar_like_archive(tmp_path, ("cat", "dog"))
    with pytest.raises(ValueError, match="'dog' is not one of the model's classes"):
        load_test_images(root, 4, classes=["cat", "bird"])


def test_model_classes_come_from_the_artifact_metadata(artifacts, tmp_path):
    meta = json.loads(artifacts["clead"].with_suffix(".json").read_text())
    assert model_classes(artifacts["clead"]) == meta["classes"]
    assert model_classes(tmp_path / "absent.pt") is None


@pytest.mark.cifar
def test_shipped_metadata_and_the_shared_archive_agree(cifar_root):
    """The shipped models' class order is the one the fallback (sorted folders) gives."""
    if not (SHIPPED / "clead.json").is_file():
        pytest.skip("no shipped models")
    _, by_metadata, names = load_test_images(cifar_root, 50, seed=3, classes=model_classes(SHIPPED / "clead.pt"))
    _, by_folders, same = load_test_images(cifar_root, 50, seed=3)
    assert names == same and torch.equal(by_metadata, by_folders)


class InProcessEngine:
    """The server's own Predictor, one request at a time: the HTTP path minus the network."""

    def __init__(self, artifact: Path) -> None:
        self.predictor = Predictor.from_artifact(str(artifact))

    def post(self, png: bytes) -> dict:
        return self.predictor.predict([{"body": png}], ["all"])[0]


def test_png_round_trip_is_exact():
    from serving.predictor import Limits, decode_image

    x = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    assert torch.equal(to_uint8(decode_image(png_bytes(x), (3, 32, 32), Limits())), x)


def test_remote_classifier_returns_log_probabilities(artifacts):
    engine = InProcessEngine(artifacts["clead"])
    model = RemoteClassifier(engine, concurrency=2)
    x = torch.rand(3, 3, 32, 32)
    try:
        out = model(x)
    finally:
        model.close()
    assert out.shape == (3, 10) and torch.allclose(out.exp().sum(1), torch.ones(3), atol=1e-4)
    assert model.log.queries == 3


class MetricsPage:
    """A loopback HTTP server answering GET with a Prometheus text page that ``pages`` scripts."""

    def __init__(self, pages: list[str]) -> None:
        import http.server
        import threading

        self.pages = list(pages)
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = (outer.pages.pop(0) if len(outer.pages) > 1 else outer.pages[0]).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/metrics"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def triton_page(inferences: int, executions: int) -> str:
    return ("# HELP nv_inference_count Number of inferences performed\n# TYPE nv_inference_count counter\n"
            f'nv_inference_count{{model="clead",version="1"}} {inferences}\n'
            'nv_inference_count{model="baseline",version="1"} 999\n'
            f'nv_inference_exec_count{{model="clead",version="1"}} {executions}\n'
            'nv_inference_exec_count{model="baseline",version="1"} 1\n')


def torchserve_page(images: int, passes: int) -> str:
    return (f'CleadBatchSize_sum{{Level="Model",Hostname="h",ModelName="clead"}} {images}\n'
            f'CleadBatchSize_count{{Level="Model",Hostname="h",ModelName="clead"}} {passes}\n'
            'CleadBatchSize_sum{Level="Model",Hostname="h",ModelName="clead2"} 500\n')


@pytest.mark.parametrize("engine, page", [("triton", triton_page), ("torchserve", torchserve_page)])
def test_batch_counters_read_the_models_images_per_forward_pass(engine, page):
    from serving.redteam import BatchCounters

    # Before the run; then (TorchServe's metrics lag) a page that does not cover the queries yet; then all.
    server = MetricsPage([page(10, 5), page(30, 10), page(50, 15)])
    try:
        counters = BatchCounters(server.url, engine, "clead")
        counters.begin()
        summary = counters.summary(queries=40, wait_s=20)
    finally:
        server.close()
    assert summary == {"measured": True, "source": server.url, "images": 40, "forward_passes": 10,
                       "mean_batch_size": 4.0, "covers_all_queries": True}


def test_batch_counters_that_cannot_be_read_are_not_measured():
    from serving.redteam import BatchCounters
    from serving.torchserve import free_port

    counters = BatchCounters(f"http://127.0.0.1:{free_port()}/metrics", "triton", "clead", timeout=2)
    counters.begin()
    summary = counters.summary(queries=10, wait_s=1)
    assert summary["measured"] is False and "cannot read" in summary["reason"]
    server = MetricsPage([triton_page(7, 3)])  # never moves: nothing of this model was forwarded
    try:
        counters = BatchCounters(server.url, "triton", "clead")
        counters.begin()
        summary = counters.summary(queries=10, wait_s=1)
    finally:
        server.close()
    assert summary["measured"] is False and "did not move" in summary["reason"]
    table = format_table([{"model": "m", "attack": "square", "n": 1, "engine": "triton", "server_batches": summary}])
    assert "| server images per forward pass (its metrics) | not measured |" in table
    assert "| engine attacked | triton |" in table


@pytest.mark.slow
@pytest.mark.parametrize("attack", ["square", "rays"])
def test_run_stays_within_its_bounds(artifacts, tmp_path, attack):
    """Query budget per image, the 8-bit eps-ball, robust <= clean, and the report files."""
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=g)
    engine = InProcessEngine(artifacts["clead"])
    labels = torch.tensor([engine.post(png_bytes(img))["index"] for img in clean])  # all clean-correct
    config = RedteamConfig(model="tiny", attack=attack, queries=20, n=6, chunk=4, whitebox_steps=2, concurrency=2)
    report = run_redteam(config, engine, clean, labels, artifact=artifacts["clead"])
    assert report["n"] == 6 and report["clean_acc"] == 1.0 and report["engine"] == "torchserve"
    assert report["robust_acc"] <= report["clean_acc"]
    assert report["server_batches"] is None  # no --metrics-url: not measured, never guessed
    # Per image: the clean query, at most `queries` attack queries (Square's first included), the final check.
    assert report["total_queries"] <= 6 * (20 + 2)
    assert report["max_linf_levels"] <= 8
    adv = report["_images"]["adv"]
    assert (adv.int() - clean.int()).abs().max() <= 8
    assert report["whitebox"]["clean_acc"] == 1.0
    assert report["sanity"]["server_clean_acc_matches_local"]
    out = write_report(report, tmp_path / "run", command="clead-serve redteam ...")
    saved = json.loads((out / "report.json").read_text())
    assert saved["total_queries"] == report["total_queries"] and (out / "adversarial.npz").is_file()
    assert "accuracy under attack" in (out / "report.md").read_text()
    assert "| queries sent |" in format_table([saved])


def test_rays_fools_only_within_eps_and_counts_its_queries():
    """A known decision rule: class 1 once the mean pixel passes a threshold, else class 0."""
    from serving.rays import rays_attack

    clean = torch.full((4, 3, 8, 8), 100, dtype=torch.uint8)
    clean[2:] = 120  # these two sit closer to the threshold (mean 125)
    calls = []

    def classify(images: torch.Tensor) -> torch.Tensor:
        calls.append(len(images))
        return (images.float().mean(dim=(1, 2, 3)) > 125).long()

    labels = torch.zeros(4, dtype=torch.long)
    adv, spent = rays_attack(classify, clean, labels, eps_levels=8, queries=50)
    assert int(spent.sum()) == sum(calls) and int(spent.max()) <= 50
    assert (adv.int() - clean.int()).abs().max() <= 8
    fooled = classify(adv) != labels
    assert fooled.tolist() == [False, False, True, True]  # 25 levels away is out of reach, 5 is not
    assert max(calls) > 1  # images step together: one round of queries per step


def test_time_budget_stops_the_run(artifacts):
    clean = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    engine = InProcessEngine(artifacts["clead"])
    labels = torch.tensor([engine.post(png_bytes(img))["index"] for img in clean])
    config = RedteamConfig(queries=10_000, n=4, chunk=2, whitebox_steps=0, max_seconds=0.5)
    start = time.monotonic()
    report = run_redteam(config, engine, clean, labels)
    assert time.monotonic() - start < 30
    assert report["stopped_early"] and report["n"] < 4


# --------------------------------------------------------------------------------------------
# Against a real TorchServe, with the shipped (augmented) models
# --------------------------------------------------------------------------------------------
def flagged_total(metrics_url: str, model: str) -> int:
    """The handler's SuspicionFlagged counter for ``model`` on TorchServe's Prometheus port."""
    from tests.serving.test_servers import scrape, value

    return round(value(scrape(metrics_url), "SuspicionFlagged", ModelName=model))


@pytest.fixture(scope="module")
def shipped_server(tmp_path_factory, cifar_root):
    from serving.torchserve import stop_instance
    from tests.serving.test_servers import serve_up

    workdir = tmp_path_factory.mktemp("redteam-serve")
    server = serve_up(workdir, {"clead": SHIPPED / "clead.pt", "baseline": SHIPPED / "baseline.pt"},
                      "--batch-size", "8", "--max-batch-delay-ms", "20", "--timeout", "150")
    yield server
    server.interrupt()
    stop_instance(workdir, timeout_s=30)


@pytest.fixture(scope="module")
def shipped_triton(cifar_root):
    """``clead-serve triton`` with the shipped models, as a user starts it; batches of 8 within 20 ms."""
    from serving.torchserve import free_port
    from serving.tritonenv import ensure_env
    from tests.serving.test_servers import ServerProcess, server_children

    ensure_env()  # one-time venv; done here so the server's own wait below stays short
    http, metrics = free_port(), free_port()
    cmd = [sys.executable, "-m", "serving.cli", "triton", "--models-dir", str(SHIPPED), "--http-port", str(http),
           "--grpc-port", str(free_port()), "--metrics-port", str(metrics), "--max-queue-delay-us", "20000"]
    server = ServerProcess(cmd, "Triton is ready", timeout_s=240)
    server.url, server.metrics_url = f"http://127.0.0.1:{http}", f"http://127.0.0.1:{metrics}/metrics"
    children = server_children(server.proc.pid)
    yield server
    server.interrupt()
    for child in children:  # nothing of it may outlive the test module
        if child.is_running():
            child.kill()


# What every report carries, whichever engine was attacked (the TorchServe and Triton tests check both).
REPORT_FIELDS = {"model", "engine", "url", "attack", "config", "n", "n_requested", "stopped_early", "clean_acc",
                 "robust_acc", "attack_success_rate", "median_queries_to_success", "mean_queries_to_success",
                 "total_queries", "wall_seconds", "queries_per_second", "server_mean_batch_size", "server_batches",
                 "max_linf_levels", "suspicion", "command"}
BUDGET = {"n": 16, "queries": 60, "max_seconds": 400}


def redteam_cli(cifar_root: Path, out: Path, model: str, *engine_args: str) -> dict:
    """``clead-serve redteam`` on ``model`` within BUDGET, as a user runs it; the checked report."""
    cmd = [sys.executable, "-m", "serving.cli", "redteam", *engine_args, "--model", model,
           "--n", str(BUDGET["n"]), "--queries", str(BUDGET["queries"]), "--eps", "8/255", "--concurrency", "16",
           "--chunk", "16", "--whitebox-steps", "0", "--max-seconds", str(BUDGET["max_seconds"]),
           "--data", str(cifar_root), "--out", str(out)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert set(report) == REPORT_FIELDS
    assert report["n"] == BUDGET["n"] and not report["stopped_early"]
    assert report["total_queries"] <= BUDGET["n"] * (BUDGET["queries"] + 2)
    assert report["wall_seconds"] < BUDGET["max_seconds"]
    assert report["server_mean_batch_size"] > 1, "the attack's concurrent queries were not batched"
    batches = report["server_batches"]
    assert batches["measured"], batches
    assert batches["mean_batch_size"] > 1 and batches["images"] >= report["total_queries"], batches
    assert report["max_linf_levels"] <= 8
    assert report["suspicion"]["scored_queries"] == report["total_queries"]
    return report


@pytest.mark.server
@pytest.mark.slow
@pytest.mark.cifar
def test_redteam_against_torchserve(shipped_server, cifar_root, tmp_path):
    """Bounded, batched, baseline fooled more often than the hardened model, flagged count rises."""
    reports = {}
    for model in ("baseline", "clead"):
        before = flagged_total(shipped_server.metrics_url, model)
        report = reports[model] = redteam_cli(
            cifar_root, tmp_path / model, model, "--url", shipped_server.url,
            "--metrics-url", shipped_server.metrics_url, "--key-file", str(shipped_server.workdir / "key_file.json"))
        assert report["engine"] == "torchserve"
        deadline = time.monotonic() + 30  # the frontend writes the worker's metrics as they arrive
        while flagged_total(shipped_server.metrics_url, model) < before + report["suspicion"]["flagged_queries"]:
            assert time.monotonic() < deadline, "SuspicionFlagged on the metrics port did not rise"
            time.sleep(1)
        assert report["suspicion"]["flagged_queries"] > 0
    assert reports["baseline"]["attack_success_rate"] > reports["clead"]["attack_success_rate"]


@pytest.mark.server
@pytest.mark.slow
@pytest.mark.cifar
def test_redteam_against_triton(shipped_triton, cifar_root, tmp_path):
    """The same run through Triton's KServe v2 HTTP endpoint: bounded, batched (by its answers and
    by its nv_inference counters), the baseline fooled more often than the hardened model. (A
    non-loopback --url or --metrics-url is refused before any query: the CLI test above.)"""
    reports = {}
    for model in ("baseline", "clead"):
        report = reports[model] = redteam_cli(cifar_root, tmp_path / model, model, "--engine", "triton",
                                              "--url", shipped_triton.url, "--metrics-url", shipped_triton.metrics_url)
        assert report["engine"] == "triton" and report["url"] == shipped_triton.url
    assert reports["baseline"]["attack_success_rate"] > reports["clead"]["attack_success_rate"]


def test_a_server_that_goes_away_ends_the_run_with_a_partial_report(artifacts):
    import requests

    class Dying(InProcessEngine):
        def __init__(self, artifact, calls: int) -> None:
            super().__init__(artifact)
            self.left = calls

        def post(self, png: bytes) -> dict:
            self.left -= 1
            if self.left < 0:
                raise requests.ConnectionError("Remote end closed connection without response")
            return super().post(png)

    clean = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([InProcessEngine(artifacts["clead"]).post(png_bytes(img))["index"] for img in clean])
    config = RedteamConfig(queries=50, n=4, chunk=2, whitebox_steps=0, concurrency=1)
    report = run_redteam(config, Dying(artifacts["clead"], calls=30), clean, labels)
    assert "the server failed" in report["stopped_early"] and report["n"] < 4

"""Black-box attacks on a running server, through its HTTP API only (``clead-serve redteam``).

The attack sees the deployment as any client does: it sends PNG images and reads the
probability vector of the answer. Two engines, the same answer (the predictor's JSON):
TorchServe (:class:`HTTPEngine`, ``X-TopK: all``) and Triton (:class:`TritonEngine`, KServe v2
over HTTP, ``topk`` -1). PNG is lossless, so the 8-bit image the attack builds is exactly the
image the server classifies; every query is put on the 8-bit grid and inside the eps-ball of
the clean image's 8-bit pixels before it is sent.

* ``square``: Square Attack (Andriushchenko et al., 2020), L-inf, score-based, torchattacks'
  implementation run on :class:`RemoteClassifier`, a ``torch.nn.Module`` whose forward is a
  round of HTTP requests. Each iteration of the attack queries every image not yet fooled at
  once; those queries go out as concurrent requests, so the server batches the attacker's
  queries as it batches anyone's.
* ``rays``: RayS (Chen & Gu, 2020), L-inf, decision-based: uses only the predicted label
  (``serving/rays.py``, written here; see why there). Same rounds of concurrent queries.

The run is bounded three ways: queries per image (``--queries``), images (``--n``) and wall
time (``--max-seconds``, checked before every round of queries). It talks to loopback only
unless ``--allow-remote`` is given. The server's batching is read twice: the ``batch_size``
of every answer, and, with ``--metrics-url``, the server's own counters of images and forward
passes (:class:`BatchCounters`). Imports only torch, numpy, PIL, requests, torchattacks and,
for Triton, tritonclient (through ``serving.client``); never ``training``.
"""

from __future__ import annotations

import io
import ipaddress
import json
import math
import re
import socket
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence
from urllib.parse import urlparse

import numpy as np
import torch
from PIL import Image

from serving.settings import RedteamConfig
from serving.artifact import metadata_path, read_metadata
from serving.rays import rays_attack

ATTACKS = ("square", "rays")
ENGINES = ("torchserve", "triton")


class BudgetExceeded(RuntimeError):
    """The run's wall-time budget ran out; the images finished so far are still reported."""


def check_url(url: str, allow_remote: bool) -> str:
    """``url`` if its host is loopback (or ``allow_remote``); otherwise ValueError."""
    host = urlparse(url if "://" in url else f"http://{url}").hostname
    if not host:
        raise ValueError(f"cannot read a host from --url {url!r}")
    if allow_remote:
        return url
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror as exc:
        raise ValueError(f"cannot resolve {host!r}: {exc}") from None
    if not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        raise ValueError(f"{url} is not a loopback address ({', '.join(sorted(addresses))}); red-teaming a remote "
                         "server sends it thousands of queries: pass --allow-remote if it is yours to attack")
    return url


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)


def png_bytes(image: torch.Tensor) -> bytes:
    """uint8 CHW -> PNG file bytes (lossless: the server decodes exactly these pixels)."""
    buf = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy(), "RGB").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def model_classes(artifact: str | Path) -> list[str] | None:
    """The served model's class names, in its output order, from the metadata beside ``artifact``
    (the file the server's archive was built from); None when there is no such file."""
    if not metadata_path(artifact).is_file():
        return None
    return [str(c) for c in read_metadata(artifact)["classes"]]


def load_test_images(data_root: str | Path, n: int, seed: int = 0, classes: Sequence[str] | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """``n`` seeded-random CIFAR-10 test images from ``test.tar.gz``: (uint8 NCHW, labels, member names).

    A reader of its own because serving must not import ``training.data``; same archive layout
    (``cifar10/test/<class>/<file>.jpg``). A label is the index of the image's class folder in
    ``classes``, the model's class list (:func:`model_classes`). Without one (no local metadata:
    the server answers with labels but never lists its classes in order), the archive's class
    folders in sorted order, which is how ``training.data`` numbers them for every model it trains.
    """
    path = Path(data_root) / "test.tar.gz"
    if not path.is_file():
        raise FileNotFoundError(f"no {path}; point --data at the CIFAR-10 folder (see its README)")
    with tarfile.open(path, "r:gz") as tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile() and m.name.lower().endswith((".jpg", ".png"))}
        names = sorted(members)
        order = np.random.default_rng(seed).permutation(len(names))[:n]
        chosen = sorted(names[i] for i in order)
        index = {c: i for i, c in enumerate(classes if classes is not None
                                             else sorted({Path(name).parent.name for name in names}))}
        images, labels = [], []
        for name in chosen:
            folder = Path(name).parent.name
            if folder not in index:
                raise ValueError(f"{path}: class folder {folder!r} is not one of the model's classes {list(index)}")
            data = tar.extractfile(members[name]).read()
            images.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.uint8))
            labels.append(index[folder])
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(labels), chosen


class Engine(Protocol):
    """What the attack talks to: one PNG in, the server's answer with ``probabilities`` out."""

    def post(self, png: bytes) -> dict[str, Any]: ...


def full_answer(body: dict[str, Any], endpoint: str, asked: str) -> dict[str, Any]:
    """``body`` if it carries the probability vector the attack needs; RuntimeError otherwise."""
    if "probabilities" not in body:
        raise RuntimeError(f"{endpoint} did not return the probability vector for {asked} "
                           "(a server older than this client?)")
    return body


class HTTPEngine:
    """``post(png) -> response dict`` against TorchServe's inference API, full probabilities asked."""

    def __init__(self, url: str, model: str, key: str | None = None, key_file: str | Path | None = None,
                 timeout: float = 60.0) -> None:
        self.endpoint = f"{url.rstrip('/')}/predictions/{model}"
        self.key, self.key_file, self.timeout = key, Path(key_file) if key_file else None, timeout
        self._local = threading.local()  # a requests.Session per thread: sessions are not thread-safe

    def _headers(self) -> dict[str, str]:
        key = self.key
        if key is None and self.key_file is not None and self.key_file.is_file():
            key = json.loads(self.key_file.read_text())["inference"]["key"]
        headers = {"Content-Type": "image/png", "X-TopK": "all"}
        return {**headers, "Authorization": f"Bearer {key}"} if key else headers

    def post(self, png: bytes) -> dict[str, Any]:
        import requests

        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        resp = session.post(self.endpoint, data=png, headers=self._headers(), timeout=self.timeout)
        if resp.status_code != 200:
            raise RuntimeError(f"{self.endpoint} answered {resp.status_code}: {resp.text[:300]}")
        return full_answer(resp.json(), self.endpoint, "X-TopK: all")


class TritonEngine:
    """``post(png) -> response dict`` against ``clead-serve triton`` (KServe v2 over HTTP), topk -1
    (every class and the probability vector).

    Through :class:`serving.client.TritonClient`, one per thread: tritonclient's clients are not
    thread-safe. No retries, as :class:`HTTPEngine`: a refused query ends the run with the images
    finished so far. Triton has no inference keys.
    """

    def __init__(self, url: str, model: str, timeout: float = 60.0) -> None:
        self.url, self.model, self.timeout = url, model, timeout
        self.endpoint = f"{url.rstrip('/')}/v2/models/{model}/infer"
        self._local = threading.local()

    def post(self, png: bytes) -> dict[str, Any]:
        from serving.client import NO_RETRY, TritonClient

        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = TritonClient(self.url, timeout=self.timeout, retry=NO_RETRY)
        try:
            body = client.predict(png, self.model, topk="all")
        except client._server_error as exc:  # tritonclient's InferenceServerException is no RuntimeError
            raise RuntimeError(f"{self.endpoint} answered {exc}") from exc
        return full_answer(body, self.endpoint, "topk -1")


# Per engine, the counters on its Prometheus metrics port: (images forwarded, forward passes, the
# label naming the model). TorchServe's are the handler's CleadBatchSize histogram
# (serving/handler_metrics.py); Triton's, its per-model inference and execution counts.
BATCH_COUNTERS = {
    "torchserve": ("CleadBatchSize_sum", "CleadBatchSize_count", "ModelName"),
    "triton": ("nv_inference_count", "nv_inference_exec_count", "model"),
}
SAMPLE = re.compile(r"^([A-Za-z_:][\w:]*)\{(.*)\}\s+(\S+)")


class BatchCounters:
    """The server's own count of images and forward passes for one model, before and after the run.

    Images per forward pass from the server's side, beside the ``batch_size`` its answers carry
    (a mean over queries, in which a batch of 8 weighs eight times as much as a lone request, so
    it is the larger of the two).
    The counters include every client's requests to the model, not only the attack's; the
    report gives the image count to compare with the queries sent.
    """

    def __init__(self, url: str, engine: str, model: str, timeout: float = 10.0) -> None:
        self.url, self.model, self.timeout = url, model, timeout
        self.images_name, self.passes_name, self.label = BATCH_COUNTERS[engine]
        self.start: tuple[float, float] | None = None
        self.error: str | None = None

    def read(self) -> tuple[float, float]:
        """(images, forward passes) so far; OSError or ValueError when the metrics cannot be read."""
        import requests

        resp = requests.get(self.url, timeout=self.timeout)
        if resp.status_code != 200:
            raise ValueError(f"{self.url} answered {resp.status_code}")
        totals = {self.images_name: 0.0, self.passes_name: 0.0}
        for line in resp.text.splitlines():
            match = SAMPLE.match(line)
            if match and match.group(1) in totals and dict(re.findall(r'(\w+)="([^"]*)"', match.group(2))).get(
                    self.label) == self.model:
                totals[match.group(1)] += float(match.group(3))
        return totals[self.images_name], totals[self.passes_name]

    def begin(self) -> None:
        try:
            self.start = self.read()
        except (OSError, ValueError) as exc:  # requests' errors are OSErrors
            self.error = f"cannot read {self.url}: {exc}"

    def summary(self, queries: int, wait_s: float = 30.0) -> dict[str, Any]:
        """Images and forward passes since :meth:`begin`, and their ratio; ``measured: False`` and why
        when the counters could not be read or never moved. Waits up to ``wait_s`` for the counters
        to cover ``queries`` images: TorchServe's reach its metrics port through the worker's log."""
        deadline = time.monotonic() + wait_s
        while self.error is None:
            try:
                images, passes = (now - then for now, then in zip(self.read(), self.start))
            except (OSError, ValueError) as exc:
                self.error = f"cannot read {self.url}: {exc}"
                break
            if images >= queries or time.monotonic() > deadline:
                if passes <= 0:
                    self.error = f"{self.images_name} / {self.passes_name} for {self.label}={self.model!r} did not move"
                    break
                return {"measured": True, "source": self.url, "images": int(images), "forward_passes": int(passes),
                        "mean_batch_size": round(images / passes, 3), "covers_all_queries": images >= queries}
            time.sleep(1.0)
        return {"measured": False, "source": self.url, "reason": self.error}


@dataclass
class QueryLog:
    """What the server said while being attacked."""

    queries: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    suspicion: list[float] = field(default_factory=list)
    flagged: int = 0
    seconds_in_queries: float = 0.0


class RemoteClassifier(torch.nn.Module):
    """A model whose forward asks the server: [0, 1] NCHW -> log-probabilities (as logits).

    Log-probabilities differ from the logits by a per-image constant, so every margin and
    softmax-based loss of an attack is unchanged. Each forward is one round of concurrent
    requests; ``project`` (if set) puts the images on the 8-bit grid inside the eps-ball first.
    """

    def __init__(self, engine: Engine, concurrency: int = 16, deadline: float = math.inf) -> None:
        super().__init__()
        self.engine = engine
        self.pool = ThreadPoolExecutor(max_workers=concurrency)
        self.deadline = deadline
        self.log = QueryLog()
        self.project: Callable[[torch.Tensor], torch.Tensor] | None = None
        # torchattacks reads its device from the model's first parameter.
        self.register_parameter("_device_anchor", torch.nn.Parameter(torch.zeros(1), requires_grad=False))

    def classify(self, images: torch.Tensor) -> list[dict[str, Any]]:
        """uint8 NCHW -> one response per image, sent concurrently."""
        if time.monotonic() > self.deadline:
            raise BudgetExceeded("the red-team run's --max-seconds budget is spent")
        start = time.perf_counter()
        responses = list(self.pool.map(self.engine.post, [png_bytes(img) for img in images]))
        self.log.seconds_in_queries += time.perf_counter() - start
        self.log.queries += len(responses)
        for r in responses:
            if "batch_size" in r:  # an answer without it says nothing of the batch it was in
                self.log.batch_sizes.append(int(r["batch_size"]))
            if "suspicion" in r:
                self.log.suspicion.append(float(r["suspicion"]))
                self.log.flagged += int(bool(r.get("flagged")))
        return responses

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        images = to_uint8(self.project(x) if self.project is not None else x)
        probs = torch.tensor([r["probabilities"] for r in self.classify(images)], dtype=torch.float64)
        return probs.clamp_min(1e-45).log().float()

    def close(self) -> None:
        self.pool.shutdown(wait=True)


def square_attack(model: RemoteClassifier, clean: torch.Tensor, labels: torch.Tensor, config: RedteamConfig
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Square on uint8 ``clean`` images the server classifies correctly: (adv uint8, queries per image).

    Runs torchattacks' ``attack_single_run`` rather than ``forward`` because only the former
    returns the per-image query counts the report needs; ``perturb`` adds nothing here (one
    restart, and we pass only correctly classified images, as it would).
    """
    import torchattacks

    x = clean.float() / 255
    # Square spends one query on its initial stripes and then one per iteration of n_queries, so
    # queries - 1 iterations keep each image within its budget of `queries`.
    attack = torchattacks.Square(model, norm="Linf", eps=config.eps, n_queries=max(1, config.queries - 1), n_restarts=1,
                                 p_init=config.p_init, loss="margin", seed=config.seed)
    attack.init_hyperparam(x)
    torch.manual_seed(config.seed)  # what Square.perturb does before its restarts
    n_queries, adv = attack.attack_single_run(x, labels)
    return to_uint8(adv), n_queries.long()


class _RowTracker:
    """Projects any subset of a chunk's images: finds each row's clean image by nearest match.

    Square passes ``x_best[idx] + delta`` for an unknown subset ``idx``; every row stays within
    eps of its own clean image and, for eps well below the distance between two CIFAR-10
    images, of no other, so the clean image is the one at the smallest L-inf distance.
    """

    def __init__(self, clean: torch.Tensor, eps: float) -> None:
        self.clean = clean.float() / 255
        self.levels = math.floor(eps * 255 + 1e-6)
        self.lo = (clean.float() - self.levels).clamp(0, 255) / 255
        self.hi = (clean.float() + self.levels).clamp(0, 255) / 255

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        dist = (x.flatten(1)[:, None, :] - self.clean.flatten(1)[None]).abs().amax(dim=2)
        idx = dist.argmin(dim=1)
        return torch.minimum(torch.maximum((x * 255).round() / 255, self.lo[idx]), self.hi[idx])


def whitebox_apgd(artifact: str | Path, clean: torch.Tensor, labels: torch.Tensor, config: RedteamConfig
                  ) -> dict[str, Any]:
    """White-box APGD-CE (torchattacks) on the local TorchScript artifact, the same images."""
    import warnings

    import torchattacks

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = torch.jit.load(str(artifact), map_location="cpu").eval()
    x = clean.float() / 255
    start = time.perf_counter()
    attack = torchattacks.APGD(model, norm="Linf", eps=config.eps, steps=config.whitebox_steps, n_restarts=1,
                               loss="ce", seed=config.seed)
    correct = torch.zeros(len(x), dtype=torch.bool)
    adv_correct = torch.zeros(len(x), dtype=torch.bool)
    for s in range(0, len(x), 100):
        xb, yb = x[s:s + 100], labels[s:s + 100]
        with torch.no_grad():
            correct[s:s + 100] = model(xb).argmax(1) == yb
        xa = attack(xb, yb)
        # The white-box attack's images, rounded to 8 bits as a served image would be.
        with torch.no_grad():
            adv_correct[s:s + 100] = model(to_uint8(xa).float() / 255).argmax(1) == yb
    return {"clean_acc": float(correct.float().mean()), "apgd_acc": float(adv_correct.float().mean()),
            "steps": config.whitebox_steps, "implementation": f"torchattacks {torchattacks.__version__} APGD-CE",
            "seconds": round(time.perf_counter() - start, 2), "artifact": str(artifact)}


def roc_auc(negatives: Sequence[float], positives: Sequence[float]) -> float | None:
    """Mann-Whitney ROC AUC (ties count half): P(score of a positive > score of a negative)."""
    neg, pos = np.asarray(negatives, float), np.asarray(positives, float)
    if not len(neg) or not len(pos):
        return None
    greater = (pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()
    return float(greater / (len(pos) * len(neg)))


@dataclass
class _Answers:
    """What the server answered for each image: predicted index, suspicion score, flagged."""

    pred: torch.Tensor
    susp: torch.Tensor
    flag: torch.Tensor

    @classmethod
    def unanswered(cls, n: int) -> "_Answers":
        return cls(torch.full((n,), -1), torch.full((n,), float("nan")), torch.zeros(n, dtype=torch.bool))

    def record(self, sl: slice, responses: list[dict[str, Any]]) -> None:
        self.pred[sl] = torch.tensor([r["index"] for r in responses])
        self.susp[sl] = torch.tensor([float(r.get("suspicion", float("nan"))) for r in responses])
        self.flag[sl] = torch.tensor([bool(r.get("flagged")) for r in responses])


def run_redteam(config: RedteamConfig, engine: Engine, clean: torch.Tensor, labels: torch.Tensor,
                artifact: str | Path | None = None) -> dict[str, Any]:
    """Attack ``clean`` (uint8 NCHW) through ``engine``; returns the report dict (and the images)."""
    if config.attack not in ATTACKS:
        raise ValueError(f"unknown attack {config.attack!r}; valid: {', '.join(ATTACKS)}")
    if config.engine not in ENGINES:
        raise ValueError(f"unknown engine {config.engine!r}; valid: {', '.join(ENGINES)}")
    check_url(config.url, config.allow_remote)
    counters = None
    if config.metrics_url:
        counters = BatchCounters(check_url(config.metrics_url, config.allow_remote), config.engine, config.model)
        counters.begin()
    start = time.monotonic()
    model = RemoteClassifier(engine, config.concurrency, deadline=start + config.max_seconds)
    run = _Run.start(clean)
    try:
        run.attack(model, config, clean, labels)
    finally:
        model.close()
    wall = time.monotonic() - start
    report = summarise(config, clean, run.adv, labels, run.before.pred, run.after.pred, run.queries, run.done,
                       model.log, wall, run.stopped)
    report["server_batches"] = counters.summary(model.log.queries) if counters is not None else None
    if model.log.suspicion:
        report["suspicion"] = suspicion_summary(run.done, run.before.pred, run.after.pred, labels, run.before.susp,
                                                run.after.susp, run.before.flag, run.after.flag, model.log)
    if artifact is not None and config.whitebox_steps > 0 and bool(run.done.any()):
        idx = torch.nonzero(run.done).flatten()
        report["whitebox"] = whitebox_apgd(artifact, clean[idx], labels[idx], config)
        report["sanity"] = sanity(report)
    report["_images"] = {"clean": clean[run.done], "adv": run.adv[run.done], "labels": labels[run.done]}
    return report


@dataclass
class _Run:
    """A run's state per image: adversarial images, answers before and after, queries, done."""

    adv: torch.Tensor
    before: _Answers
    after: _Answers
    queries: torch.Tensor
    done: torch.Tensor
    stopped: str | None = None

    @classmethod
    def start(cls, clean: torch.Tensor) -> "_Run":
        n = len(clean)
        return cls(clean.clone(), _Answers.unanswered(n), _Answers.unanswered(n), torch.zeros(n, dtype=torch.long),
                   torch.zeros(n, dtype=torch.bool))

    def attack(self, model: RemoteClassifier, config: RedteamConfig, clean: torch.Tensor, labels: torch.Tensor
               ) -> None:
        """Chunk by chunk: classify, attack the correct ones, classify the result; stops early on
        the time budget or a failing server, keeping the chunks finished (``stopped`` says why)."""
        try:
            for s in range(0, len(clean), config.chunk):
                sl = slice(s, min(s + config.chunk, len(clean)))
                self.before.record(sl, model.classify(clean[sl]))
                self.queries[sl] = 1
                right = torch.nonzero(self.before.pred[sl] == labels[sl]).flatten() + s
                if len(right):
                    adv_right, q = attack_chunk(model, config, clean[right], labels[right])
                    self.adv[right] = adv_right
                    self.queries[right] += q
                # What the server says about the final 8-bit images (the verdict the report uses).
                self.after.record(sl, model.classify(self.adv[sl]))
                self.done[sl] = True
        except BudgetExceeded as exc:
            self.stopped = str(exc)
        except (OSError, RuntimeError) as exc:  # requests' errors are OSErrors; a refused query, a RuntimeError
            # The server went away or refused: report the images finished so far instead of nothing.
            self.stopped = f"the server failed: {exc}"


def attack_chunk(model: RemoteClassifier, config: RedteamConfig, clean: torch.Tensor, labels: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``config.attack`` on uint8 images the server classifies correctly: (adv uint8, queries per image)."""
    if config.attack == "rays":
        return rays_attack(lambda imgs: torch.tensor([r["index"] for r in model.classify(imgs)]),
                           clean, labels, math.floor(config.eps * 255 + 1e-6), config.queries)
    model.project = _RowTracker(clean, config.eps)
    try:
        return square_attack(model, clean, labels, config)
    finally:
        model.project = None


def summarise(config, clean, adv, labels, clean_pred, adv_pred, queries, done, log, wall, stopped
              ) -> dict[str, Any]:
    idx = torch.nonzero(done).flatten()
    y, cp, ap = labels[idx], clean_pred[idx], adv_pred[idx]
    success = (cp == y) & (ap != y)
    q_success = queries[idx][success].float()
    linf_levels = int((adv[idx].int() - clean[idx].int()).abs().max()) if len(idx) else 0
    report: dict[str, Any] = {
        "model": config.model, "engine": config.engine, "url": config.url, "attack": config.attack,
        "config": asdict(config),
        "n": int(len(idx)), "n_requested": config.n, "stopped_early": stopped,
        "clean_acc": float((cp == y).float().mean()) if len(idx) else None,
        "robust_acc": float((ap == y).float().mean()) if len(idx) else None,
        "attack_success_rate": float(success.sum() / max(1, int((cp == y).sum()))),
        "median_queries_to_success": float(q_success.median()) if len(q_success) else None,
        "mean_queries_to_success": float(q_success.mean()) if len(q_success) else None,
        "total_queries": int(log.queries),
        "wall_seconds": round(wall, 2),
        "queries_per_second": round(log.queries / wall, 2) if wall > 0 else None,
        # Per query: the batch_size of every answer (the server's forward pass it shared).
        "server_mean_batch_size": round(float(np.mean(log.batch_sizes)), 3) if log.batch_sizes else None,
        "server_batches": None,  # the server's own counters (BatchCounters), with --metrics-url
        "max_linf_levels": linf_levels,  # in 8-bit levels; floor(eps * 255) at most
        "suspicion": None,
    }
    return report


def suspicion_summary(done, clean_pred, adv_pred, labels, clean_susp, adv_susp, clean_flag, adv_flag, log
                      ) -> dict[str, Any]:
    """The server's suspicion on the clean images, the final adversarial ones, and every query."""
    idx = torch.nonzero(done).flatten()
    y = labels[idx]
    fooled = (clean_pred[idx] == y) & (adv_pred[idx] != y)
    cs, as_ = clean_susp[idx], adv_susp[idx]
    return {
        "flagged_queries": int(log.flagged), "scored_queries": len(log.suspicion),
        "flagged_query_rate": round(log.flagged / len(log.suspicion), 4),
        "clean_flagged_rate": round(float(clean_flag[idx].float().mean()), 4),
        "adversarial_flagged_rate": round(float(adv_flag[idx].float().mean()), 4),
        "detection_rate_fooled": round(float(adv_flag[idx][fooled].float().mean()), 4) if bool(fooled.any()) else None,
        "clean_mean": round(float(cs.nanmean()), 4), "adversarial_mean": round(float(as_.nanmean()), 4),
        "roc_auc_clean_vs_adversarial": roc_auc(cs.tolist(), as_.tolist()),
        "roc_auc_clean_vs_fooled": roc_auc(cs.tolist(), as_[fooled].tolist()),
    }


def sanity(report: dict[str, Any]) -> dict[str, Any]:
    """Carlini et al. (2019): a black-box attack must not beat the white-box one."""
    wb = report["whitebox"]
    return {
        "server_clean_acc_matches_local": abs(wb["clean_acc"] - report["clean_acc"]) < 1e-9,
        "blackbox_acc_ge_whitebox_acc": report["robust_acc"] >= wb["apgd_acc"],
    }


ROWS = (
    ("engine attacked", "engine", "{}"),
    ("clean accuracy (server)", "clean_acc", "{:.3f}"),
    ("accuracy under attack (black-box, server)", "robust_acc", "{:.3f}"),
    ("white-box APGD-CE accuracy (local artifact)", "whitebox.apgd_acc", "{:.3f}"),
    ("attack success rate (of clean-correct)", "attack_success_rate", "{:.3f}"),
    ("median queries to success", "median_queries_to_success", "{:.0f}"),
    ("mean queries to success", "mean_queries_to_success", "{:.1f}"),
    ("queries sent", "total_queries", "{:d}"),
    ("wall time (s)", "wall_seconds", "{:.1f}"),
    ("queries / s", "queries_per_second", "{:.1f}"),
    ("server mean batch size (per query, from its answers)", "server_mean_batch_size", "{:.2f}"),
    ("server images per forward pass (its metrics)", "server_batches.mean_batch_size", "{:.2f}", "not measured"),
    ("max L-inf of x_adv - x (8-bit levels)", "max_linf_levels", "{:d}"),
    ("queries the server flagged", "suspicion.flagged_queries", "{:d}"),
    ("clean flagged rate", "suspicion.clean_flagged_rate", "{:.3f}"),
    ("detection rate among fooled", "suspicion.detection_rate_fooled", "{:.3f}"),
    ("suspicion ROC AUC clean vs adversarial", "suspicion.roc_auc_clean_vs_adversarial", "{:.3f}"),
)


def _get(report: dict[str, Any], dotted: str) -> Any:
    value: Any = report
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def format_table(reports: Sequence[dict[str, Any]]) -> str:
    """A markdown table, one column per report (model)."""
    head = "| | " + " | ".join(f"{r['model']} ({r['attack']}, {r['n']} images)" for r in reports) + " |"
    lines = [head, "|---|" + "---|" * len(reports)]
    for label, key, fmt, *missing in ROWS:
        cells = []
        for r in reports:
            v = _get(r, key)
            cells.append((missing or ["n/a"])[0] if v is None else fmt.format(v))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(report: dict[str, Any], out: str | Path, command: str = "") -> Path:
    """``report.json``, ``report.md`` and ``adversarial.npz`` (uint8 clean/adv images, labels) in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    images = report.pop("_images", None)
    report["command"] = command
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    eps_levels = math.floor(report["config"]["eps"] * 255 + 1e-6)
    md = [f"# Red team: {report['attack']} against `{report['model']}` at {report['url']} ({report['engine']})", "",
          f"L-inf eps = {eps_levels}/255 on the 8-bit grid (PNG), {report['config']['queries']} queries per image, "
          f"{report['n']} CIFAR-10 test images (seed {report['config']['seed']}).", "",
          format_table([report]), ""]
    if report.get("sanity"):
        md += ["Sanity (Carlini et al. 2019): " + ", ".join(f"{k}: {v}" for k, v in report["sanity"].items()), ""]
    if report.get("stopped_early"):
        md += [f"Stopped early: {report['stopped_early']}", ""]
    if command:
        md += ["Command:", "", f"    {command}", ""]
    (out / "report.md").write_text("\n".join(md))
    if images is not None:
        np.savez_compressed(out / "adversarial.npz", **{k: v.numpy() for k, v in images.items()})
    return out

"""Robustness evaluation: clean and adversarial accuracy on a fixed, class-balanced subset.

``evaluate(model, data, attacks, ...)`` is the library function and ``robustness_curve``
measures accuracy against eps; ``training.cli.evaluate`` makes them the ``clead-train eval``
subcommand, ``training.evaluation.report`` writes the reports.

Robust accuracy is counted per image, and only images the model classifies correctly are
attacked (a misclassified clean image is already non-robust, as in AutoAttack and
RobustBench). The "worst case" row counts an image as robust only if it survives every
attack run under the main L-inf threat model.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from training.data import ImageSet
from training.evaluation.specs import (
    DEFAULT_ATTACKS, AttackSpec, as_specs, build_attack, fmt_eps, implementation_of,
)
from training.pauses import clock

# ---------------------------------------------------------------------------------------
# Subsets and batched accuracy
# ---------------------------------------------------------------------------------------
def balanced_subset(labels: torch.Tensor, n: Optional[int], seed: int = 0) -> torch.Tensor:
    """Sorted indices of a seeded, class-balanced subset of size ``n`` (all if None).

    Classes are drawn round-robin from one seeded shuffle, so a smaller ``n`` with the same
    seed is a subset of a larger one (the robustness curve's images are among the report's).
    """
    total = len(labels)
    if n is None or n >= total:
        return torch.arange(total)
    perm = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    shuffled = labels[perm]
    rank = torch.empty(total, dtype=torch.long)
    for c in shuffled.unique():
        where = (shuffled == c).nonzero().squeeze(1)
        rank[where] = torch.arange(len(where))
    order = torch.argsort(rank * (int(labels.max()) + 1) + shuffled, stable=True)
    return perm[order[:n]].sort().values


def _fingerprint(index: torch.Tensor, data: ImageSet) -> str:
    digest = hashlib.sha1(index.numpy().tobytes())
    digest.update(data.labels[index].numpy().tobytes())
    return digest.hexdigest()


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, leave=False, file=sys.stderr)


def _batches(x_all: torch.Tensor, index: torch.Tensor, batch_size: int, device: torch.device):
    for chunk in index.split(batch_size):
        yield chunk, x_all[chunk].to(device).float().div_(255)


@torch.no_grad()
def correct_mask(
    model: nn.Module, data: ImageSet, batch_size: int, device: torch.device, progress: bool = False
) -> torch.Tensor:
    """Per-image clean correctness (bool, on CPU)."""
    out = torch.zeros(len(data), dtype=torch.bool)
    with _progress(len(data), "clean", progress) as bar:
        for chunk, x in _batches(data.images, torch.arange(len(data)), batch_size, device):
            out[chunk] = (model(x).argmax(1).cpu() == data.labels[chunk])
            bar.update(len(chunk))
    return out


def robust_mask(
    model: nn.Module,
    attack: Callable,
    data: ImageSet,
    clean_correct: torch.Tensor,
    batch_size: int,
    device: torch.device,
    desc: str = "attack",
    progress: bool = False,
    *,
    seed: int = 0,
    workers: int = 1,
    done: Optional[dict[int, torch.Tensor]] = None,
    on_batch: Optional[Callable[[int, torch.Tensor], None]] = None,
) -> torch.Tensor:
    """Per-image robustness: correct on clean input and on the attack's output.

    The clean-correct images are attacked in batches of ``batch_size``, batch ``i`` from the
    random state ``seed + i``: which random start an image gets depends on the batches alone,
    not on the order they run in. With ``workers > 1`` (CPU only) that many forked processes
    attack the batches side by side, each with an equal share of torch's threads: on a small
    CPU, processes of one thread each get more out of the cores than one process's threads
    do on batches this small (``python -m benchmarks.eval_layouts --workers 2``). The result
    is the same function of the batches as with one worker (up to the order in which a
    thread count sums floating-point numbers). For the same reason a long attack can resume
    batch by batch: ``done`` holds the masks of batches already attacked (skipped here), and
    ``on_batch(i, mask)`` hears of each batch as it finishes.
    """
    robust = clean_correct.clone()
    batches = list(clean_correct.nonzero().squeeze(1).split(batch_size))
    done = done or {}
    for i, mask in done.items():
        robust[batches[i]] = mask
    job = _AttackBatches(model, attack, data, batches, torch.device(device), desc, seed)
    with _progress(sum(len(b) for b in batches), desc, progress) as bar:
        bar.update(sum(len(batches[i]) for i in done))
        for i, result in job.run(workers, skip=set(done)):
            robust[batches[i]] = result
            bar.update(len(batches[i]))
            if on_batch:
                on_batch(i, result)
    return robust


class _AttackBatches:
    """The batches of one ``robust_mask`` call, run here or in forked worker processes."""

    def __init__(self, model, attack, data: ImageSet, batches: list[torch.Tensor], device: torch.device,
                 desc: str, seed: int) -> None:
        self.model, self.attack, self.data, self.batches = model, attack, data, batches
        self.device, self.desc, self.seed = device, desc, seed

    def __call__(self, i: int) -> torch.Tensor:
        chunk = self.batches[i]
        torch.manual_seed(self.seed + i)
        x = self.data.images[chunk].to(self.device).float().div_(255)
        y = self.data.labels[chunk].to(self.device)
        x_adv = self.attack(self.model, x, y)
        check_threat_model(x_adv, x, self.attack.eps, getattr(self.attack, "norm", "linf"), self.desc)
        with torch.no_grad():
            return (self.model(x_adv).argmax(1) == y).cpu()

    def run(self, workers: int, skip: frozenset[int] | set[int] = frozenset()):
        """Yield ``(batch index, robust mask)`` as batches finish (all but ``skip``)."""
        if workers < 1:
            raise ValueError(f"workers must be >= 1, not {workers}")
        todo = [i for i in range(len(self.batches)) if i not in skip]
        if workers == 1 or len(todo) <= 1:
            for i in todo:
                yield i, self(i)
            return
        if self.device.type != "cpu":
            raise ValueError(f"workers > 1 runs forked CPU processes; on {self.device.type} evaluate with one")
        threads = threads_per_worker(workers)
        if not autograd_survives_fork(threads):
            warnings.warn("--workers: a process forked from this one cannot run autograd (PyTorch refuses it once "
                          "autograd or OpenMP threads have started here, https://github.com/pytorch/pytorch/wiki/"
                          "Autograd-and-Fork); attacking the batches in this process, one after the other: the same "
                          "results, without the workers' speed-up")
            for i in todo:
                yield i, self(i)
            return
        yield from self._forked(todo, min(workers, len(todo)), threads)

    def _forked(self, todo: list[int], workers: int, threads: int):
        global _FORKED
        _FORKED = self  # inherited by the forked workers: nothing is pickled but batch numbers and results
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"), initializer=_start_worker,
                                   initargs=(threads,))
        try:
            for future in as_completed([pool.submit(_work, i) for i in todo]):
                i, mask, stages = future.result()
                if stages:
                    self.attack.add_stage_log(stages)
                yield i, torch.tensor(mask, dtype=torch.bool)
        except BrokenProcessPool as e:  # multiprocessing.Pool would wait for the dead worker forever
            raise RuntimeError(f"{self.desc}: a worker process died (killed, out of memory, or aborted after the "
                               "fork); the batches reported so far are kept: rerun with --resume, or with "
                               "--workers 1") from e
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # a stopped caller waits for the batches under way only
            _FORKED = None


_FORKED: Optional[_AttackBatches] = None


def autograd_survives_fork(threads: int = 1, timeout_s: float = 60.0) -> bool:
    """Whether a process forked from this one, with ``threads`` torch threads, can run a backward pass.

    Once a process has started autograd's helper threads, PyTorch refuses backward in its forked
    children ("Unable to handle autograd's threading in combination with fork-based
    multiprocessing"), and a child forked while other threads hold locks may abort or hang: a
    forked probe finds out before the workers do.
    """
    probe = multiprocessing.get_context("fork").Process(target=_probe_backward, args=(threads,))
    probe.start()
    probe.join(timeout_s)
    if probe.is_alive():
        probe.kill()
        probe.join()
        return False
    return probe.exitcode == 0


def _probe_backward(threads: int) -> None:
    ok = False
    try:
        torch.set_num_threads(threads)
        x = torch.ones(2, requires_grad=True)
        (2 * x).sum().backward()
        ok = bool(torch.equal(x.grad, torch.full((2,), 2.0)))
    finally:
        os._exit(0 if ok else 1)  # no traceback, no atexit handlers of the parent's


def threads_per_worker(workers: int) -> int:
    """Each worker's share of torch's CPU threads (at least one)."""
    return max(1, torch.get_num_threads() // workers)


def _start_worker(threads: int) -> None:
    torch.set_num_threads(threads)
    if hasattr(_FORKED.attack, "mute_progress"):
        _FORKED.attack.mute_progress()  # the parent's bar counts batches; workers draw none


def _work(i: int) -> tuple[int, list[bool], list[dict]]:
    attack = _FORKED.attack
    before = attack.stage_log if hasattr(attack, "stage_log") else []
    mask = _FORKED(i)
    after = attack.stage_log if hasattr(attack, "stage_log") else []
    return i, mask.tolist(), _stage_delta(before, after)


def _stage_delta(before: list[dict], after: list[dict]) -> list[dict]:
    """What one batch added to a multi-stage attack's ``stage_log``."""
    old = {e["attack"]: e for e in before}
    out = []
    for entry in after:
        prev = old.get(entry["attack"], {})
        out.append({"attack": entry["attack"], **{k: v - prev.get(k, 0) for k, v in entry.items() if k != "attack"}})
    return out


def check_threat_model(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str, name: str, tol: float = 1e-5) -> None:
    """An attack whose output leaves the eps-ball or [0, 1] would inflate its success: refuse it."""
    if x_adv.shape != x.shape:
        raise RuntimeError(f"attack {name} returned shape {tuple(x_adv.shape)} for inputs {tuple(x.shape)}")
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    if size.numel() and size.max() > eps + tol:
        raise RuntimeError(f"attack {name} returned a perturbation of {norm} size {size.max():.6f} > eps {eps:.6f}")
    if x_adv.numel() and (x_adv.min() < -tol or x_adv.max() > 1 + tol):
        raise RuntimeError(f"attack {name} returned images outside [0, 1]")


# ---------------------------------------------------------------------------------------
# The library entry point
# ---------------------------------------------------------------------------------------
def prepare_model(model: nn.Module, device: torch.device) -> bool:
    """Move to ``device`` and switch to eval mode; returns the mode to restore.

    Like RobustBench, warn when handed a model in train mode: BatchNorm would use batch
    statistics and dropout would be live, which misstates robustness.
    """
    was_training = model.training
    if was_training:
        warnings.warn("model was passed in train mode; evaluating it in eval mode", stacklevel=3)
    model.to(device).eval()
    return was_training


def optimize_for_attack(model: nn.Module, probe: torch.Tensor, freeze: bool = False,
                        channels_last: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """The same function, computed faster for evaluation: ``freeze`` folds a TorchScript
    model's BatchNorm into its convolutions (``torch.jit.freeze``: still fp32, still
    differentiable with respect to the input), ``channels_last`` runs convolutions in NHWC.

    Neither may change what is measured: the logits on ``probe`` must agree with the original
    model's to 1e-4 relative, or this raises instead of evaluating a different model.
    """
    model.eval()
    with torch.no_grad():
        reference = model(probe)
    if not (freeze or channels_last):
        return model, {"frozen": False, "channels_last": False, "threads": torch.get_num_threads()}
    fast = model
    if freeze:
        if not isinstance(model, torch.jit.ScriptModule):
            raise ValueError("freeze needs a TorchScript artifact (an exported .pt); this model is not one")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # freeze's deprecation notice
            fast = torch.jit.freeze(model)
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
    fast = _Optimized(fast, channels_last)
    with torch.no_grad():
        logits = fast(probe)
    tolerance = 1e-4 * max(1.0, float(reference.abs().max()))
    if not torch.allclose(logits, reference, rtol=0, atol=tolerance):
        diff = float((logits - reference).abs().max())
        raise RuntimeError(f"the optimised model's logits differ from the model's by {diff:.2e} "
                           f"(> {tolerance:.1e}); evaluate without --freeze/--channels-last")
    return fast, {"frozen": freeze, "channels_last": channels_last, "threads": torch.get_num_threads()}


class _Optimized(nn.Module):
    """The optimised model behind a plain module that is always in eval mode: a frozen
    TorchScript module has no train/eval switch, and evaluation switches modes on what it gets.
    With ``channels_last`` it hands the model its input in that layout (values unchanged)."""

    def __init__(self, model: nn.Module, channels_last: bool) -> None:
        super().__init__()
        self.model, self.channels_last = model, channels_last
        self.training = False

    def train(self, mode: bool = True) -> "_Optimized":
        return self  # the wrapped model stays in eval mode, whatever is asked

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.contiguous(memory_format=torch.channels_last) if self.channels_last else x)


def _mask_str(mask: torch.Tensor) -> str:
    return "".join("1" if v else "0" for v in mask.tolist())


def _mask_of(text: str) -> torch.Tensor:
    return torch.tensor([c == "1" for c in text], dtype=torch.bool)


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def evaluate(
    model: nn.Module,
    data: ImageSet,
    attacks: Sequence[AttackSpec | str] | str = DEFAULT_ATTACKS,
    eps: float = 8 / 255,
    n: Optional[int] = 1000,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: bool = True,
    resume_from: Optional[dict] = None,
    on_update: Optional[Callable[[dict], None]] = None,
    workers: int = 1,
) -> dict:
    """Clean and per-attack robust accuracy of ``model`` on ``n`` class-balanced images.

    Every attack runs from the same seed, so results do not depend on the order of the list.
    ``resume_from`` (an earlier report on the same images) skips attacks whose name, eps and
    settings match and continues the one it left unfinished (``partial``) after its last
    batch; ``on_update`` gets the report after each attack and each batch (with ``partial``);
    ``workers`` CPU processes attack batches side by side (``robust_mask``).
    """
    specs, device = as_specs(attacks), torch.device(device)
    subset, data_info = _subset_of(data, n, seed)
    previous, unfinished = _reusable(resume_from, data_info)
    was_training = prepare_model(model, device)
    try:
        with torch.no_grad():
            n_classes = int(model(subset.images[:1].to(device).float() / 255).shape[1])
        clean, report = _clean_report(model, subset, data_info, eps, batch_size, device, progress)

        def save_partial(partial: dict) -> None:  # after each batch of the attack that runs
            if on_update:
                on_update({**report, "partial": partial})

        # The earlier run's unfinished attack stays in every save until that attack runs again,
        # so a run killed before reaching it loses none of its batches.
        pending = unfinished
        for spec in specs:
            entry = _run_one(model, spec, subset, clean, eps, n_classes, batch_size, device, seed, progress, previous,
                             workers, unfinished, save_partial)
            report["attacks"].append(entry)
            report["worst_case"] = worst_case(report)
            pending = None if pending and pending.get("attack") == spec.name else pending
            if on_update:
                on_update({**report, "partial": pending} if pending else report)
        report["worst_case"] = worst_case(report)  # also with no attacks
        return {**report, "partial": pending} if pending else report
    finally:
        model.train(was_training)


def _clean_report(model, subset: ImageSet, data_info: dict, eps: float, batch_size: int, device: torch.device,
                  progress: bool) -> tuple[torch.Tensor, dict[str, Any]]:
    """The clean-correct mask, and the report that starts with it (no attacks yet)."""
    start = clock()
    clean = correct_mask(model, subset, batch_size, device, progress)
    return clean, {"eps": eps, "data": data_info, "clean": {
        "accuracy": clean.float().mean().item(), "n": len(subset), "seconds": clock() - start,
        "correct_mask": _mask_str(clean)}, "attacks": []}


def _subset_of(data: ImageSet, n: Optional[int], seed: int) -> tuple[ImageSet, dict]:
    """The seeded class-balanced subset, and what a report says of it (its fingerprint)."""
    index = balanced_subset(data.labels, n, seed)
    return data.subset(index), {"n": len(index), "of": len(data), "seed": seed, "class_balanced": n is not None,
                                "indices_sha1": _fingerprint(index, data)}


def _reusable(resume_from: Optional[dict], data_info: dict) -> tuple[dict[str, dict], Optional[dict]]:
    """The earlier report's finished attacks by (name, settings), and the attack it left
    unfinished (``partial``), if it was made on the same images."""
    if not resume_from:
        return {}, None
    if resume_from.get("data", {}).get("indices_sha1") != data_info["indices_sha1"]:
        warnings.warn("--resume: the earlier report used other images (n, seed or data differ); re-running every attack")
        return {}, None
    done = {json.dumps([r["attack"], r["settings"]], sort_keys=True): r for r in resume_from.get("attacks", [])}
    return done, resume_from.get("partial")


def _run_one(model, spec, subset, clean, eps, n_classes, batch_size, device, seed, progress, previous, workers,
             unfinished: Optional[dict] = None, save_partial: Optional[Callable[[dict], None]] = None) -> dict:
    attack = build_attack(spec, eps, n_classes, seed)
    settings = _jsonable(attack.settings())
    key = json.dumps([spec.name, settings], sort_keys=True)
    if key in previous:
        _say(f"{spec.label}: reusing the result in report.json (same settings and images)", progress)
        return {**previous[key], "label": spec.label, "resumed": True}
    partial = {"attack": spec.name, "settings": settings, "batch_size": batch_size, "seed": seed,
               "correct_mask": _mask_str(clean), "batches": {}, "seconds": 0.0}
    done = _finished_batches(unfinished, partial, clean, batch_size)
    if done:
        partial.update(batches=dict(unfinished["batches"]), seconds=float(unfinished.get("seconds", 0.0)))
        if unfinished.get("stages") and hasattr(attack, "add_stage_log"):
            attack.add_stage_log(unfinished["stages"])
        _say(f"{spec.label}: continuing after the {len(done)} batches report.json holds", progress)
    before, start = partial["seconds"], clock()  # robust_mask seeds each batch

    def on_batch(i: int, mask: torch.Tensor) -> None:
        partial["batches"][str(i)] = _mask_str(mask)
        partial["seconds"] = before + clock() - start
        if hasattr(attack, "stage_log"):
            partial["stages"] = attack.stage_log
        if save_partial:
            save_partial(partial)

    with _stage_progress(attack, spec.label, progress, chunk=min(batch_size, 100)):
        robust = robust_mask(model, attack, subset, clean, batch_size, device, spec.label, progress,
                             seed=seed, workers=workers, done=done, on_batch=on_batch)
    entry = {
        "attack": spec.name,
        "label": spec.label,
        "implementation": implementation_of(attack),
        "accuracy": robust.float().mean().item(),
        "n": len(subset),
        "eps": attack.eps,
        "norm": getattr(attack, "norm", "linf"),
        "settings": settings,
        "seconds": before + clock() - start,
        "robust_mask": _mask_str(robust),
    }
    if done:
        entry["resumed_batches"] = len(done)
    if hasattr(attack, "stage_log"):  # AutoAttack: where the time went, stage by stage
        entry["stages"] = attack.stage_log
    _say(f"{spec.label}: {100 * entry['accuracy']:.2f}% robust ({entry['seconds']:.1f} s)", progress)
    return entry


def _finished_batches(unfinished: Optional[dict], partial: dict, clean: torch.Tensor,
                      batch_size: int) -> dict[int, torch.Tensor]:
    """The batches an interrupted run of this very attack finished: same attack, settings,
    seed, batch size and clean-correct images (so the same batches), else none."""
    if not unfinished:
        return {}
    same = all(unfinished.get(k) == partial[k] for k in ("attack", "settings", "seed", "batch_size", "correct_mask"))
    if not same:
        if unfinished.get("attack") == partial["attack"]:
            warnings.warn(f"--resume: the unfinished {partial['attack']} in report.json ran with other settings, "
                          "seed, batch size or clean predictions; starting it again")
        return {}
    sizes = [len(b) for b in clean.nonzero().squeeze(1).split(batch_size)]
    done = {}
    for i, bits in unfinished.get("batches", {}).items():
        if not (0 <= int(i) < len(sizes)) or len(bits) != sizes[int(i)]:
            raise ValueError(f"report.json: unfinished batch {i} does not fit the batches of this run")
        done[int(i)] = _mask_of(bits)
    return done


@contextmanager
def _stage_progress(attack, label: str, enabled: bool, chunk: int):
    """A progress bar (images done, rate, ETA) per stage of a multi-stage attack (AutoAttack).

    The stages run in chunks of ``chunk`` images whether or not the bars are shown, so that
    ``--no-progress`` cannot change which random starts an image gets."""
    if not hasattr(attack, "on_progress"):
        yield
        return
    bars: dict[str, Any] = {}

    def update(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None or bar.total != total or bar.n > done:
            if bar is not None:
                bar.close()
            bar = bars[stage] = _progress(total, f"{label}/{stage}", True)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    attack.on_progress(update if enabled else None, chunk)
    try:
        yield
    finally:
        attack.on_progress(None)
        for bar in bars.values():
            bar.close()


def _say(text: str, progress: bool) -> None:
    if progress:
        from tqdm.auto import tqdm

        tqdm.write(text, file=sys.stderr)


def worst_case(report: dict) -> dict:
    """Per image, robust only if it survived every attack under the main L-inf threat model."""
    same = [r for r in report["attacks"] if r["norm"] == "linf" and abs(r["eps"] - report["eps"]) < 1e-9]
    mask = _mask_of(report["clean"]["correct_mask"])
    for r in same:
        mask &= _mask_of(r["robust_mask"])
    return {"accuracy": mask.float().mean().item(), "n": len(mask), "attacks": [r["label"] for r in same]}


# ---------------------------------------------------------------------------------------
# Robustness curve
# ---------------------------------------------------------------------------------------
def robustness_curve(
    model: nn.Module,
    data: ImageSet,
    attacks: Sequence[AttackSpec],
    eps_values: Sequence[float],
    n: Optional[int] = 200,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: bool = True,
    workers: int = 1,
) -> dict:
    """Accuracy versus eps (L-inf attacks only) on ``n`` class-balanced images."""
    attacks, device = as_specs(attacks), torch.device(device)
    subset = data.subset(balanced_subset(data.labels, n, seed))
    was_training = prepare_model(model, device)
    try:
        with torch.no_grad():
            n_classes = int(model(subset.images[:1].to(device).float() / 255).shape[1])
        clean = correct_mask(model, subset, batch_size, device)
        curves: dict[str, list[float]] = {}
        worst = [clean.clone() for _ in eps_values]
        for spec in attacks:
            if build_attack(spec, 8 / 255, n_classes, seed).norm != "linf":
                continue
            curves[spec.label] = []
            for i, eps in enumerate(eps_values):
                attack = build_attack(AttackSpec(spec.name, {**spec.settings, "eps": eps}, spec.label), eps, n_classes, seed)
                desc = f"curve {spec.label} eps={fmt_eps(eps)}"
                robust = robust_mask(model, attack, subset, clean, batch_size, device, desc, progress,
                                     seed=seed, workers=workers)
                curves[spec.label].append(robust.float().mean().item())
                worst[i] &= robust
        if len(curves) > 1:
            curves["worst case"] = [w.float().mean().item() for w in worst]
        return {"eps": list(eps_values), "n": len(subset), "accuracy": curves}
    finally:
        model.train(was_training)

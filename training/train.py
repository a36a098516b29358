"""The one training loop that runs every method (``clead-train fit``, ``training.cli.fit``).

The loop owns the optimiser, schedule, AMP, logging, validation, checkpoints and
distributed setup; it never knows which method it runs (the method is a task, see
``training.methods.base``). Run it on one device, or on many with
``torchrun --nproc_per_node N -m training.cli fit ...`` (DDP).
"""

from __future__ import annotations

import copy
import json
import math
import random
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Optional

import torch
import yaml
from torch import nn
from tqdm import tqdm

from training import config as C
from training.attacks import create_attack
from training.checkpoint import BEST, LAST, load_resumable, save_checkpoint
from training.data import BatchLoader, ImageSet, load_train_val
from training.curves import EpochObserver
from training.ema import WeightEMA
from training.distributed import DistInfo, all_reduce_sum, barrier, cleanup, init_distributed, params_in_sync
from training._moved import forward as _forward
from training.export import write_json_atomic
from training.methods import Method, create_method, resolve
from training.models import create_model
from training.runinfo import git_commit, hardware, versions

# ---------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------
def lr_factor(step: int, total: int, schedule: str, warmup: float) -> float:
    """Multiplier of the peak lr at ``step`` of ``total``."""
    progress = step / max(total, 1)
    if schedule == "onecycle":  # linear 0 -> peak at `warmup`, then linear -> 0
        return progress / warmup if progress < warmup else max(0.0, (1 - progress) / (1 - warmup))
    if progress < warmup:
        return (step + 1) / max(warmup * total, 1)
    return 0.5 * (1 + math.cos(math.pi * (progress - warmup) / max(1 - warmup, 1e-8)))


def amp_dtype(cfg: C.TrainConfig, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of ``cfg.amp``. ``auto`` is bf16 on CUDA; on a CPU it is bf16 only
    where the CPU has native bf16 (``amp.cpu_bf16_native``) and a timed step confirms it is
    faster (``Trainer.probe_cpu_amp``), so this returns ``None`` and the probe decides."""
    choice = cfg.amp
    if choice == "auto":
        choice = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "off"
    if choice == "fp16" and device.type != "cuda":
        raise ValueError(f"invalid option --amp: fp16 needs a CUDA device (this run is on {device}); "
                         "on a CPU use bf16")
    if choice == "bf16" and device.type == "cpu" and not cpu_bf16_native():
        warnings.warn("--amp bf16 on a CPU without native bf16 (no avx512_bf16/amx_bf16): it is emulated and "
                      "usually slower than fp32", stacklevel=2)
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(choice)


def cpu_bf16_native() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX), from /proc/cpuinfo."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


class Trainer:
    def __init__(self, cfg: C.TrainConfig, dist_info: DistInfo, device: torch.device) -> None:
        self.cfg, self.dist, self.device = cfg, dist_info, device
        self.dtype = amp_dtype(cfg, device)
        self.amp_probe: Optional[dict[str, float]] = None
        self.channels_last = cfg.channels_last if cfg.channels_last is not None else device.type == "cuda"

    # -- setup ------------------------------------------------------------------------------
    def build(self, train: ImageSet) -> None:
        cfg = self.cfg
        kw = {"width": cfg.model.width} if cfg.model.width is not None else {}
        self.classes = list(train.classes)
        self.model = create_model(cfg.model.name, num_classes=len(self.classes), **kw).to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.method: Method = create_method(self.model, cfg).to(self.device)
        o = cfg.optim
        trainable = [p for p in self.method.parameters() if p.requires_grad]  # not a momentum encoder
        if o.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(trainable, lr=o.lr, momentum=o.momentum,
                                             weight_decay=o.weight_decay, nesterov=o.momentum > 0)
        else:
            self.optimizer = torch.optim.AdamW(trainable, lr=o.lr, weight_decay=o.weight_decay)
        self.ema = WeightEMA(self.model, o.ema_decay) if o.ema_decay else None
        self.loader = BatchLoader(train, cfg.data.batch_size, self.device, shuffle=True, augment=cfg.data.augment,
                                  padding=cfg.data.crop_padding, drop_last=len(train) >= 2 * cfg.data.batch_size,
                                  seed=cfg.seed, rank=self.dist.rank, world_size=self.dist.world_size)
        self.total_steps = cfg.epochs * len(self.loader)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, self.total_steps, o.schedule, o.warmup))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.dtype == torch.float16)
        engine: nn.Module = self.method
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            engine = nn.parallel.DistributedDataParallel(self.method, device_ids=ids)
        self.engine = torch.compile(engine) if cfg.compile else engine
        self.selection = "val_robust_acc" if self.method.adversarial else "val_clean_acc"
        self.epoch, self.best, self.history = 0, -1.0, []

    # -- one epoch ----------------------------------------------------------------------
    def autocast(self):
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def train_epoch(self) -> dict[str, float]:
        self.method.train()
        self.loader.set_epoch(self.epoch)
        sums: dict[str, float] = {}
        seen = correct = 0
        start = time.perf_counter()
        bar = tqdm(self.loader, desc=f"epoch {self.epoch + 1}/{self.cfg.epochs}", disable=not self.dist.is_main,
                   leave=False, dynamic_ncols=True)
        for x, y in bar:
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with self.autocast():
                extra = self.method.perturb(x, y)
                out = self.engine(x, y, **extra)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(out["loss"]).backward()
            if self.cfg.optim.grad_clip:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.method.parameters(), self.cfg.optim.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.method.after_step()
            if self.ema is not None:
                self.ema.update(self.model)
            n = y.shape[0]
            seen += n
            correct += int((out["logits"].argmax(1) == y).sum())
            for k, v in out.items():
                if k != "logits":
                    sums[k] = sums.get(k, 0.0) + float(v.detach()) * n
            bar.set_postfix(loss=f"{float(out['loss'].detach()):.3f}", acc=f"{correct / seen:.3f}")
        seconds = time.perf_counter() - start
        totals = all_reduce_sum([seen, correct, seconds] + [sums[k] for k in sorted(sums)], self.device)
        seen_all, correct_all = totals[0], totals[1]
        metrics = {f"train_{k}": v / seen_all for k, v in zip(sorted(sums), totals[3:])}
        metrics.update(train_acc=correct_all / seen_all, images_per_s=seen_all / seconds, epoch_seconds=seconds,
                       lr=self.optimizer.param_groups[0]["lr"])
        return metrics

    @torch.no_grad()
    def validate(self, val: ImageSet) -> dict[str, float]:
        """Clean, FGSM and PGD accuracy (training eps) on this rank's shard of the validation
        set, for the model and, when weights are averaged, for the average (``ema_val_*``)."""
        if len(val) == 0:
            return {}
        val = val.head(self.cfg.val_n)
        metrics = self._validate_one(self.model, val, "val")
        if self.ema is not None:
            metrics.update(self._validate_one(self.ema.module, val, "ema_val"))
        return metrics

    def _validate_one(self, model: nn.Module, val: ImageSet, prefix: str) -> dict[str, float]:
        cfg = self.cfg
        model.eval()
        loader = BatchLoader(val, cfg.data.eval_batch_size, self.device, rank=self.dist.rank,
                             world_size=self.dist.world_size)
        eps = cfg.attack.eps if cfg.attack.eps > 0 else 8 / 255
        pgd = create_attack("pgd", eps=eps, steps=cfg.val_attack_steps, norm=cfg.attack.norm)
        fgsm = create_attack("fgsm", eps=eps, norm=cfg.attack.norm)  # for catastrophic overfitting
        n = clean = robust = fgsm_ok = 0
        for x, y in loader:
            clean += int((model(x).argmax(1) == y).sum())
            with self.autocast():
                x_adv, x_fgsm = pgd(model, x, y), fgsm(model, x, y)
            robust += int((model(x_adv).argmax(1) == y).sum())
            fgsm_ok += int((model(x_fgsm).argmax(1) == y).sum())
            n += y.shape[0]
        n, clean, robust, fgsm_ok = all_reduce_sum([n, clean, robust, fgsm_ok], self.device)
        return {f"{prefix}_clean_acc": clean / n, f"{prefix}_robust_acc": robust / n, f"{prefix}_fgsm_acc": fgsm_ok / n,
                "val_n": int(n), "val_eps": eps}

    def score(self, metrics: dict[str, Any]) -> tuple[float, str]:
        """The selection score of an epoch and whose weights earn it: the model's, or their
        average's when that validates better (the average is then what best.pt exports)."""
        score = metrics.get(self.selection, metrics["train_acc"])
        ema_score = metrics.get(f"ema_{self.selection}")
        if ema_score is not None and ema_score > score:
            return ema_score, "ema"
        return score, "model"

    @property
    def amp_name(self) -> str:
        """The autocast dtype of the training steps: bfloat16, float16 or fp32."""
        return str(self.dtype).replace("torch.", "") if self.dtype else "fp32"

    def probe_cpu_amp(self, x: torch.Tensor, y: torch.Tensor, repeats: int = 2) -> None:
        """``--amp auto`` on a CPU with native bf16: time a forward and backward pass in fp32 and
        under bf16 autocast on a copy of the model and keep bf16 only if it is faster (how much
        it gains varies between CPUs, so it is measured, not assumed)."""
        model = copy.deepcopy(self.model).train()
        times: dict[str, float] = {}
        for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
            ctx = (lambda: torch.autocast("cpu", dtype=dtype)) if dtype else nullcontext
            for i in range(repeats + 1):  # the first pass warms up
                start = time.perf_counter()
                with ctx():
                    loss = nn.functional.cross_entropy(model(x).float(), y)
                loss.backward()
                if i:
                    times[name] = min(times.get(name, math.inf), time.perf_counter() - start)
        self.dtype = torch.bfloat16 if times["bf16"] < times["fp32"] else None
        self.amp_probe = {**{f"{k}_step_s": v for k, v in times.items()}, "chosen": "bf16" if self.dtype else "fp32"}

    # -- state ----------------------------------------------------------------------------
    def rng_states(self) -> list[dict[str, Any]]:
        state = {"cpu": torch.get_rng_state(), "python": random.getstate()[1][:625]}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        if not self.dist.enabled:
            return [state]
        gathered: list[Any] = [None] * self.dist.world_size
        torch.distributed.all_gather_object(gathered, state)
        return gathered

    def state_dict(self, metrics: dict[str, Any], rng: list[dict[str, Any]]) -> dict[str, Any]:
        cfg = self.cfg
        return {
            "model": self.model.state_dict(),
            "method_extra": {k: v for k, v in self.method.state_dict().items() if not k.startswith("model.")},
            "model_name": cfg.model.name,
            "model_kwargs": {"width": cfg.model.width} if cfg.model.width is not None else {},
            "classes": self.classes,
            "mean": self.model.normalize.mean.flatten().tolist(),
            "std": self.model.normalize.std.flatten().tolist(),
            "config": C.to_dict(cfg),
            "method_settings": self.method.settings(),
            "epoch": self.epoch,
            "best": self.best,
            "history": self.history,
            "metrics": metrics,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "amp": self.amp_name,  # the autocast dtype the steps ran under, kept on --resume
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "selected": metrics.get("selected_weights", "model"),  # whose weights best.pt exports
            "rng": rng,
            "git_commit": git_commit(),
            "versions": versions(),
        }

    def load(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.method.load_state_dict({**{f"model.{k}": v for k, v in state["model"].items()}, **state["method_extra"]})
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.cfg.amp == "auto" and "amp" in state:  # auto chose it when the run started: keep it
            self.dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(state["amp"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.epoch, self.best, self.history = state["epoch"], state["best"], list(state["history"])
        rng = state["rng"][min(self.dist.rank, len(state["rng"]) - 1)]
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def fit(cfg: C.TrainConfig, command: str = "") -> dict[str, Any]:
    """Train per ``cfg``; returns the run summary (also written to ``<out>/summary.json``)."""
    resolve(cfg)
    dist_info, device = init_distributed(cfg.device)
    try:
        return _fit(cfg, dist_info, device, command)
    finally:
        cleanup()


def _fit(cfg: C.TrainConfig, dist_info: DistInfo, device: torch.device, command: str) -> dict[str, Any]:
    out = Path(cfg.out)
    if cfg.resume and not (out / LAST).is_file():
        raise FileNotFoundError(f"--resume: {out / LAST} does not exist (nothing to resume)")
    if not cfg.resume and (out / LAST).is_file():
        raise ValueError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    seed_everything(cfg.seed)  # same init on every rank; DDP also broadcasts rank 0's weights
    train, val = load_train_val(cfg.data)
    trainer = Trainer(cfg, dist_info, device)
    trainer.build(train)
    state = load_resumable(out / LAST, map_location=device) if cfg.resume else None  # or last.prev.pt
    # A resumed run keeps the precision it started with (Trainer.load); a new one on a CPU probes.
    if cfg.amp == "auto" and device.type == "cpu" and cpu_bf16_native() and "amp" not in (state or {}):
        x, y = next(iter(BatchLoader(train.head(cfg.data.batch_size), cfg.data.batch_size, device)))
        trainer.probe_cpu_amp(x[:, :3], y)  # with --fixed-views the view rides along as 3 more channels
    if state is not None:
        trainer.load(state)
    else:
        torch.manual_seed(cfg.seed * 1000 + dist_info.rank)  # independent attack noise per rank
    info = _run_info(cfg, trainer, out, command, len(train), len(val))
    observer = EpochObserver(out) if dist_info.is_main else None  # curves.png and TensorBoard, every epoch
    try:
        _epochs(trainer, val, out, observer)
    finally:
        if observer is not None:
            observer.close()
    summary = {**info, "epochs_run": trainer.epoch, "selection_metric": trainer.selection,
               "best_score": trainer.best, "best_epoch": _best_epoch(trainer.history),
               "wall_seconds": trainer.history[-1]["wall_seconds"] if trainer.history else 0.0,
               "final": trainer.history[-1] if trainer.history else {}}
    if dist_info.is_main:
        write_json_atomic(out / "summary.json", summary)
    return summary


def _run_info(cfg: C.TrainConfig, trainer: "Trainer", out: Path, command: str, n_train: int, n_val: int) -> dict:
    """What the run records about itself (``run.json``, and the head of ``summary.json``);
    the main process also writes ``config.yaml`` and ``run.json``."""
    info = {"command": command, "git_commit": git_commit(), "versions": versions(),
            "hardware": hardware(trainer.device, trainer.dist.world_size), "train_images": n_train,
            "val_images": n_val, "amp": trainer.amp_name, **({"amp_probe": trainer.amp_probe} if trainer.amp_probe else {})}
    if cfg.resume and (out / "run.json").is_file():
        # Keep the command that started the run; record the resumptions beside it.
        first = json.loads((out / "run.json").read_text())
        info["command"] = first.get("command", command)
        info["resumed_with"] = [*first.get("resumed_with", []), command]
        if "amp_probe" in first:  # the measurement that chose the precision the run keeps
            info["amp_probe"] = first["amp_probe"]
    if trainer.dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(C.to_dict(cfg), sort_keys=False))
        write_json_atomic(out / "run.json", info)
        if cfg.resume:
            print(f"resuming {out} after epoch {trainer.epoch}", file=sys.stderr)
    return info


def _epochs(trainer: "Trainer", val: ImageSet, out: Path, observer: Optional[EpochObserver]) -> None:
    """Train, validate, select and checkpoint epoch after epoch, until the last or an early stop."""
    cfg, is_main = trainer.cfg, trainer.dist.is_main
    wall_start = time.perf_counter()
    wall_before = trainer.history[-1]["wall_seconds"] if trainer.history else 0.0
    stale = 0
    while trainer.epoch < cfg.epochs:
        metrics = trainer.train_epoch()
        metrics.update(trainer.validate(val))
        trainer.epoch += 1
        metrics.update(epoch=trainer.epoch, ranks_in_sync=params_in_sync(trainer.method, trainer.device),
                       wall_seconds=wall_before + time.perf_counter() - wall_start)
        improved = _judge_epoch(trainer, metrics)
        stale = 0 if improved else stale + 1
        trainer.history.append(metrics)
        rng = trainer.rng_states()  # collective: every rank takes part
        if is_main:
            state = trainer.state_dict(metrics, rng)
            save_checkpoint(out / LAST, state)
            if improved:
                save_checkpoint(out / BEST, state)
            with open(out / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(metrics) + "\n")
            print(_epoch_line(metrics), file=sys.stderr)
            observer.on_epoch(metrics, trainer.history)
        if cfg.patience is not None and stale >= cfg.patience:
            if is_main:
                print(f"early stop: no better {trainer.selection} for {stale} epochs", file=sys.stderr)
            break
        barrier()


def _judge_epoch(trainer: "Trainer", metrics: dict[str, Any]) -> bool:
    """Score the epoch (whose weights, and whether they beat the best so far) and flag
    catastrophic overfitting; adds ``selected_weights``, ``catastrophic_overfitting`` and
    ``best`` to ``metrics``."""
    score, metrics["selected_weights"] = trainer.score(metrics)
    metrics["catastrophic_overfitting"] = catastrophic_overfitting(trainer.history, metrics)
    if metrics["catastrophic_overfitting"] and trainer.dist.is_main:
        print(f"warning: catastrophic overfitting at epoch {trainer.epoch}: validation PGD accuracy fell to "
              f"{metrics['val_robust_acc']:.3f} while FGSM accuracy is {metrics['val_fgsm_acc']:.3f}", file=sys.stderr)
    metrics["best"] = score > trainer.best
    if metrics["best"]:
        trainer.best = score
    return metrics["best"]


def catastrophic_overfitting(history: list[dict[str, Any]], metrics: dict[str, Any]) -> bool:
    """Catastrophic overfitting of single-step AT (Wong et al. 2020): robust (PGD) validation
    accuracy collapses to under half its best while FGSM accuracy holds or rises, i.e. the
    model has learnt to defeat the single-step attack only."""
    past = [h for h in history if "val_robust_acc" in h and "val_fgsm_acc" in h]
    if not past or "val_fgsm_acc" not in metrics:
        return False
    best = max(past, key=lambda h: h["val_robust_acc"])
    return (best["val_robust_acc"] >= 0.1 and metrics["val_robust_acc"] < 0.5 * best["val_robust_acc"]
            and metrics["val_fgsm_acc"] >= best["val_fgsm_acc"] - 0.02)


def _best_epoch(history: list[dict[str, Any]]) -> Optional[int]:
    best = [h["epoch"] for h in history if h.get("best")]
    return best[-1] if best else None


def _epoch_line(m: dict[str, Any]) -> str:
    parts = [f"epoch {m['epoch']}", f"loss {m.get('train_loss', float('nan')):.4f}", f"train_acc {m['train_acc']:.4f}"]
    if "val_clean_acc" in m:
        parts += [f"val_clean {m['val_clean_acc']:.4f}", f"val_robust {m['val_robust_acc']:.4f}"]
    if "ema_val_clean_acc" in m:
        parts += [f"ema_clean {m['ema_val_clean_acc']:.4f}", f"ema_robust {m['ema_val_robust_acc']:.4f}"]
    if m.get("catastrophic_overfitting"):
        parts.append("CATASTROPHIC OVERFITTING")
    parts += [f"{m['images_per_s']:.0f} img/s", f"lr {m['lr']:.4g}"]
    return " | ".join(parts) + (" *" if m.get("best") else "")


# The command line moved to training.cli.fit; these names still resolve here, with a warning.
__getattr__ = _forward(__name__, "training.cli.fit", ("add_arguments", "config_from_args", "run"))

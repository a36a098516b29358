"""Run configuration: one dataclass per concern, with units and defaults.

The CLI builds a ``TrainConfig`` (YAML file, then flags on top); the library never sees
argparse. ``training.methods.resolve`` (which calls ``validate`` here) runs before any data
is loaded, so a bad option fails in a second with a message naming it. The resolved config is
saved beside every run and inside every checkpoint.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Optional

from training.data import DataConfig
from training.flags import option


def parse_fraction(value: str | float) -> float:
    """``"8/255"``, ``"0.0314"`` or a number -> float, range unchecked.

    ``clead-train fit`` reads ``--eps`` and ``--attack-alpha`` with this, so that ``validate``
    reports a value out of range under the option's name.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    try:
        return float(Fraction(str(value).strip()))
    except (ValueError, ZeroDivisionError) as exc:
        raise ValueError(f"cannot read {value!r} as a number: write a fraction like 8/255 or a float like 0.031") from exc


def parse_eps(value: str | float) -> float:
    """``"8/255"``, ``"0.031"`` or a number -> float, refused unless in [0, 1] pixel units."""
    eps = parse_fraction(value)
    if not 0 <= eps <= 1:
        raise ValueError(f"eps {value!r} = {eps:.4g} is outside [0, 1]; eps is in pixel units (8/255, not 8)")
    return eps


@dataclass
class ModelConfig:
    name: str = option("preact_resnet18", "--model", "a registered model (training.models.model_names())")
    width: Optional[float] = option(None, "--width", "channel multiplier of preact_resnet18 / tiny_cnn "
                                                     "(1.0 = paper width, 0.5 half)")


@dataclass
class AttackConfig:
    """The inner maximisation of adversarial methods (L-inf unless ``norm`` says otherwise)."""

    eps: float = option(8 / 255, "--eps", "attack radius in [0, 1] pixel units, e.g. 8/255", parse=parse_fraction)
    steps: int = option(10, "--attack-steps", "inner attack steps; 1 = FGSM-RS fast adversarial training "
                                              "(Wong et al. 2020)")
    alpha: Optional[float] = option(None, "--attack-alpha", "step size in pixel units, e.g. 2/255 (None: 1.25 eps "
                                                            "for 1 step, eps for n-fgsm, else 2.5 eps/steps)",
                                    parse=parse_fraction)
    norm: str = option("linf", "--attack-norm", "linf | l2")
    mode: str = option("train", "--attack-mode", "model mode while attacking: train (batch statistics, as "
                                                 "Wong/Rice) | eval")
    kind: str = option("auto", "--attack-kind", "inner attack: auto (FGSM-RS at 1 step, else PGD) | n-fgsm "
                                                "(de Jorge et al. 2022, 1 step)")
    noise: float = option(2.0, "--attack-noise", "n-fgsm: noise from U(-noise*eps, noise*eps), never projected back")

    def step_size(self) -> float:
        if self.alpha is not None:
            return self.alpha
        if self.kind == "n-fgsm":
            return self.eps  # de Jorge et al.: step eps from a noise point, no projection
        return 1.25 * self.eps if self.steps == 1 else 2.5 * self.eps / self.steps


@dataclass
class MethodConfig:
    """Which training method, and its own options as a mapping (each method declares and
    validates them: ``training.methods``, e.g. ``CLEADOptions``); the config names no method.
    A YAML section may also list options beside ``name`` (``{name: trades, beta: 3}``)."""

    name: str = option("clead", "--method", "a registered method (training.methods.method_names())")
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    optimizer: str = option("sgd", "--optimizer", "sgd (momentum, nesterov) | adamw")
    lr: float = option(0.1, "--lr", "peak learning rate")
    momentum: float = option(0.9, "--momentum", "SGD momentum")
    weight_decay: float = option(5e-4, "--weight-decay", "weight decay")
    schedule: str = option("onecycle", "--schedule", "onecycle (linear up then down, Wong et al. 2020) | cosine "
                                                     "(with warmup)")
    warmup: float = option(0.4, "--warmup", "fraction of all steps rising linearly to the peak lr (0.4 = Wong et al.)")
    label_smoothing: float = option(0.0, "--label-smoothing", "label smoothing (off by default: it can mask "
                                                              "gradients and inflate robustness)")
    ema_decay: Optional[float] = option(None, "--ema-decay", "per-step decay of a weight average, e.g. 0.999 "
                                                             "(None or 0: off)")
    grad_clip: Optional[float] = option(None, "--grad-clip", "max global gradient norm (None: off)")


@dataclass
class TrainConfig:
    method: MethodConfig = field(default_factory=MethodConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    epochs: int = option(10, "--epochs", "number of epochs")
    out: str = option("runs/default", "--out", "run directory: checkpoints, metrics.jsonl, config.yaml")
    seed: int = option(0, "--seed", "random seed")
    device: str = option("auto", "--device", "auto | cpu | cuda | cuda:N")
    amp: str = option("auto", "--amp", "auto (bf16 on CUDA, and on CPUs with native bf16 where a timed step is "
                                       "faster) | bf16 | fp16 | off")
    channels_last: Optional[bool] = option(None, "--channels-last", "channels_last memory format (None: on for CUDA)")
    compile: bool = option(False, "--compile", "torch.compile the model")
    val_n: Optional[int] = option(500, "--val-n", "validation images attacked each epoch (None: the whole split)")
    val_attack_steps: int = option(10, "--val-attack-steps", "PGD steps of the validation attack (at the training eps)")
    patience: Optional[int] = option(None, "--patience", "early stop after this many epochs without a better "
                                                         "robust validation accuracy")
    resume: bool = option(False, "--resume", "continue the run in --out from its last.pt")


def validate(cfg: TrainConfig) -> None:
    """Raise ``ValueError`` naming the first invalid option of the sections every run has.
    The method and its options are checked by ``training.methods.resolve``, which calls this."""
    from training.models import model_names

    def check(ok: bool, option: str, message: str) -> None:
        if not ok:
            raise ValueError(f"invalid option {option}: {message}")

    a, o = cfg.attack, cfg.optim
    check(cfg.model.name in model_names(), "--model", f"unknown model {cfg.model.name!r}; valid: {', '.join(model_names())}")
    check(cfg.model.width is None or cfg.model.width > 0, "--width", f"must be > 0, got {cfg.model.width}")
    check(cfg.epochs >= 1, "--epochs", f"must be >= 1, got {cfg.epochs}")
    check(a.eps >= 0, "--eps", f"must be >= 0 (pixel units in [0, 1]), got {a.eps}")
    check(a.eps <= 1, "--eps", f"must be <= 1 (pixel units: write 8/255, not 8), got {a.eps}")
    check(a.norm in ("linf", "l2"), "--attack-norm", f"must be linf or l2, got {a.norm!r}")
    check(a.mode in ("train", "eval"), "--attack-mode", f"must be train or eval, got {a.mode!r}")
    check(a.kind in ("auto", "n-fgsm"), "--attack-kind", f"must be auto or n-fgsm, got {a.kind!r}")
    check(a.kind != "n-fgsm" or (a.steps == 1 and a.norm == "linf"), "--attack-kind",
          f"n-fgsm is a single L-inf step: use --attack-steps 1 --attack-norm linf (got {a.steps} steps, {a.norm})")
    check(a.noise >= 0, "--attack-noise", f"must be >= 0, got {a.noise}")
    check(a.alpha is None or a.alpha > 0, "--attack-alpha", f"must be > 0, got {a.alpha}")
    check(o.ema_decay is None or 0 <= o.ema_decay < 1, "--ema-decay", f"must be in [0, 1) (0 = off), got {o.ema_decay}")
    check(o.optimizer in ("sgd", "adamw"), "--optimizer", f"must be sgd or adamw, got {o.optimizer!r}")
    check(o.schedule in ("onecycle", "cosine"), "--schedule", f"must be onecycle or cosine, got {o.schedule!r}")
    check(o.lr > 0, "--lr", f"must be > 0, got {o.lr}")
    check(o.weight_decay >= 0, "--weight-decay", f"must be >= 0, got {o.weight_decay}")
    check(0 <= o.label_smoothing < 1, "--label-smoothing", f"must be in [0, 1), got {o.label_smoothing}")
    check(cfg.data.batch_size >= 1, "--batch-size", f"must be >= 1, got {cfg.data.batch_size}")
    check(cfg.data.limit is None or cfg.data.limit >= 1, "--limit", f"must be >= 1, got {cfg.data.limit}")
    check(cfg.data.val_size >= 0, "--val-size", f"must be >= 0, got {cfg.data.val_size}")
    check(cfg.amp in ("auto", "bf16", "fp16", "off"), "--amp", f"must be auto, bf16, fp16 or off, got {cfg.amp!r}")
    check(cfg.val_attack_steps >= 1, "--val-attack-steps", f"must be >= 1, got {cfg.val_attack_steps}")
    check(cfg.patience is None or cfg.patience >= 1, "--patience", f"must be >= 1, got {cfg.patience}")


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(raw: dict[str, Any]) -> TrainConfig:
    """Build a config from nested dicts (a YAML file or a checkpoint), rejecting unknown keys."""
    sections = {f.name: f for f in dataclasses.fields(TrainConfig)}
    kwargs: dict[str, Any] = {}
    for key, value in (raw or {}).items():
        if key not in sections:
            raise ValueError(f"unknown config key {key!r}; valid: {', '.join(sections)}")
        section_type = sections[key].default_factory if callable(getattr(sections[key], "default_factory", None)) else None
        if section_type is MethodConfig:
            kwargs[key] = _method_section(value)
        elif section_type is not None and dataclasses.is_dataclass(section_type):
            kwargs[key] = _section(section_type, value, key)
        else:
            kwargs[key] = value
    return TrainConfig(**kwargs)


def _section(cls, value: dict[str, Any], name: str):
    if not isinstance(value, dict):
        raise ValueError(f"config section {name!r} must be a mapping, got {value!r}")
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = set(value) - valid
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)} in config section {name!r}; valid: {', '.join(sorted(valid))}")
    if "eps" in value:
        value = {**value, "eps": parse_fraction(value["eps"])}  # validate checks the range
    return cls(**value)


def _method_section(value: dict[str, Any]) -> MethodConfig:
    """``{name, options}``; other keys beside ``name`` are options too, and win over the same
    key in ``options`` (flags of ``clead-train fit`` land there, on top of a YAML file; the
    flat section of configs that predate per-method options reads the same way)."""
    if not isinstance(value, dict):
        raise ValueError(f"config section 'method' must be a mapping, got {value!r}")
    options = dict(value.get("options") or {})
    options.update({k: v for k, v in value.items() if k not in ("name", "options")})
    return MethodConfig(name=value.get("name", MethodConfig.name), options=options)

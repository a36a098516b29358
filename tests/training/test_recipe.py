"""The fast-AT recipe options every method gets (N-FGSM, weight EMA, bf16 on CPU, the
catastrophic-overfitting flag) and the C-LEAD variants (features embedding, KL consistency,
momentum encoder)."""

from __future__ import annotations

import json

import pytest
import torch

from training import cli
from training.attacks.gradient import NFGSM
from training.checkpoint import load_checkpoint, model_from_checkpoint
from training.config import TrainConfig
from training.ema import WeightEMA
from training.methods import create_method, inner_attack, resolve
from training.models import create_model
from training.train import catastrophic_overfitting, cpu_bf16_native

FAST = ["--model", "tiny_cnn", "--epochs", "2", "--limit", "256", "--batch-size", "32", "--optimizer", "adamw",
        "--lr", "0.003", "--weight-decay", "0", "--no-augment", "--attack-steps", "1", "--val-size", "200",
        "--val-n", "64", "--val-attack-steps", "2"]


def _tiny():
    torch.manual_seed(0)
    return create_model("tiny_cnn", num_classes=10).train()


# -- N-FGSM ----------------------------------------------------------------------------------
def test_nfgsm_leaves_the_eps_ball_by_design_but_not_its_own_bound():
    model = _tiny()
    x, y = torch.rand(64, 3, 32, 32), torch.randint(0, 10, (64,))
    eps = 8 / 255
    attack = NFGSM(eps=eps)  # de Jorge et al.: noise 2 eps, step eps
    x_adv = attack(model, x, y)
    delta = (x_adv - x).abs().flatten(1).amax(1)
    assert attack.alpha == pytest.approx(eps) and attack.bound == pytest.approx(3 * eps)
    assert delta.max() <= 3 * eps + 1e-6
    assert delta.max() > eps + 1e-3, "no projection to the eps-ball: the noise must show"
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    with pytest.raises(ValueError, match="noise"):
        NFGSM(eps=eps, noise=-1)


def test_inner_attack_builds_nfgsm_only_when_asked():
    cfg = TrainConfig()
    cfg.attack.steps = 1
    assert type(inner_attack(cfg.attack)).__name__ == "FGSM"
    cfg.attack.kind = "n-fgsm"
    attack = inner_attack(cfg.attack)
    assert isinstance(attack, NFGSM) and attack.alpha == pytest.approx(cfg.attack.eps)


@pytest.mark.parametrize("section, field, value, option", [
    ("attack", "kind", "pgd-7", "--attack-kind"),
    ("attack", "noise", -0.5, "--attack-noise"),
    ("optim", "ema_decay", 1.0, "--ema-decay"),
    ("optim", "ema_decay", -0.1, "--ema-decay"),
    ("options", "embed", "logits", "--clead-embed"),
    ("options", "kl", -1.0, "--clead-kl"),
    ("options", "target", "teacher", "--clead-target"),
    ("options", "target_decay", 1.0, "--clead-target-decay"),
])
def test_new_options_are_validated(section, field, value, option):
    cfg = TrainConfig()
    if section == "options":  # C-LEAD's own options (the default method)
        cfg.method.options[field] = value
    else:
        setattr(getattr(cfg, section), field, value)
    with pytest.raises(ValueError, match=f"invalid option {option}"):
        resolve(cfg)


def test_nfgsm_needs_a_single_linf_step():
    cfg = TrainConfig()
    cfg.attack.kind, cfg.attack.steps = "n-fgsm", 3
    with pytest.raises(ValueError, match="--attack-kind"):
        resolve(cfg)


# -- weight averaging ----------------------------------------------------------------------------
def test_weight_ema_follows_the_warmed_up_decay():
    model = torch.nn.Linear(3, 1)
    ema = WeightEMA(model, decay=0.9)
    w0 = model.weight.detach().clone()
    expected = w0.clone()
    for n in range(1, 30):
        with torch.no_grad():
            model.weight.add_(1.0)
        ema.update(model)
        if n > 1:  # the first update copies; then decay min(0.9, (1 + k) / (10 + k)) after k updates
            k = n - 1
            d = min(0.9, (1 + k) / (10 + k))
            expected = d * expected + (1 - d) * model.weight.detach()
        else:
            expected = model.weight.detach().clone()
    torch.testing.assert_close(ema.module.weight, expected)
    assert not ema.module.weight.requires_grad


@pytest.mark.cifar
def test_ema_run_validates_both_and_best_exports_the_selected_weights(cifar_root, tmp_path):
    out = tmp_path / "ema"
    assert cli.main(["fit", "--method", "pgd-at", "--ema-decay", "0.9", "--data", str(cifar_root),
                     "--out", str(out), *FAST]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        assert {"ema_val_clean_acc", "ema_val_robust_acc", "val_fgsm_acc", "selected_weights"} <= set(row)
        assert row["catastrophic_overfitting"] in (True, False)
    assert (out / "curves.png").is_file()  # drawn every epoch (training.curves)
    state = load_checkpoint(out / "best.pt")
    assert state["ema"] is not None and state["selected"] in ("model", "ema")
    model, _ = model_from_checkpoint(out / "best.pt")
    source = state["model"] if state["selected"] == "model" else {
        k[len("averaged.module."):]: v for k, v in state["ema"].items() if k.startswith("averaged.module.")}
    for key, value in model.state_dict().items():
        assert torch.equal(value, source[key]), key
    # Raw and averaged weights differ after training, so the choice matters.
    assert any(not torch.equal(state["model"][k], v) for k, v in source.items() if k in state["model"]) or \
        state["selected"] == "model"


@pytest.mark.cifar
@pytest.mark.slow
def test_ema_run_resumes_to_the_same_average(cifar_root, tmp_path, monkeypatch):
    from training import train

    # fp32 both times: on a CPU with bf16, --amp auto's timed probe could pick another precision per run.
    args = ["--method", "pgd-at", "--ema-decay", "0.9", "--amp", "off", "--data", str(cifar_root), *FAST]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert cli.main(["fit", *args, "--out", str(straight)]) == 0

    real_epoch, calls = train.Trainer.train_epoch, []

    def dies_in_the_second_epoch(self):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process is gone after epoch 1's checkpoint
        return real_epoch(self)

    monkeypatch.setattr(train.Trainer, "train_epoch", dies_in_the_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        cli.main(["fit", *args, "--out", str(resumed)])
    monkeypatch.setattr(train.Trainer, "train_epoch", real_epoch)
    assert cli.main(["fit", *args, "--out", str(resumed), "--resume"]) == 0
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(resumed / "last.pt")
    for key in a["ema"]:
        torch.testing.assert_close(a["ema"][key].float(), b["ema"][key].float(), rtol=1e-4, atol=1e-5, msg=key)


def test_a_resumed_run_keeps_the_precision_it_started_with(cifar_root, tmp_path, monkeypatch):
    from training import train

    monkeypatch.setattr(train, "cpu_bf16_native", lambda: True)  # --amp auto probes, whatever this CPU has
    choices = iter([torch.bfloat16, None])  # timing noise: a second probe would pick fp32

    def probe(self, x, y, repeats=2):
        self.dtype = next(choices)
        self.amp_probe = {"chosen": "bf16" if self.dtype else "fp32"}

    monkeypatch.setattr(train.Trainer, "probe_cpu_amp", probe)
    real_epoch, calls = train.Trainer.train_epoch, []

    def dies_in_the_second_epoch(self):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_epoch(self)

    out = tmp_path / "run"
    args = ["fit", "--method", "pgd-at", "--data", str(cifar_root), *FAST, "--out", str(out)]
    monkeypatch.setattr(train.Trainer, "train_epoch", dies_in_the_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        cli.main(args)
    monkeypatch.setattr(train.Trainer, "train_epoch", real_epoch)
    assert cli.main([*args, "--resume"]) == 0
    info = json.loads((out / "run.json").read_text())
    assert info["amp"] == "bfloat16" and info["amp_probe"] == {"chosen": "bf16"} and info["resumed_with"]
    assert load_checkpoint(out / "last.pt")["amp"] == "bfloat16"


# -- catastrophic overfitting ---------------------------------------------------------------------------
def test_catastrophic_overfitting_is_a_pgd_collapse_with_fgsm_holding():
    history = [{"val_robust_acc": 0.30, "val_fgsm_acc": 0.40}, {"val_robust_acc": 0.34, "val_fgsm_acc": 0.44}]
    assert catastrophic_overfitting(history, {"val_robust_acc": 0.02, "val_fgsm_acc": 0.70})
    assert not catastrophic_overfitting(history, {"val_robust_acc": 0.33, "val_fgsm_acc": 0.45})
    # Both collapsing is a broken run, not a model that learnt to beat the single-step attack.
    assert not catastrophic_overfitting(history, {"val_robust_acc": 0.02, "val_fgsm_acc": 0.05})
    assert not catastrophic_overfitting([], {"val_robust_acc": 0.0, "val_fgsm_acc": 0.9})


# -- bf16 on CPU ---------------------------------------------------------------------------------
def test_cpu_amp_probe_measures_and_chooses(cifar_root):
    from training.data import load_train_val
    from training.distributed import DistInfo
    from training.train import Trainer

    cfg = TrainConfig()
    cfg.model.name, cfg.data.data, cfg.data.limit, cfg.data.val_size = "tiny_cnn", str(cifar_root), 64, 0
    train, _ = load_train_val(cfg.data)
    trainer = Trainer(cfg, DistInfo(), torch.device("cpu"))
    trainer.build(train)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    x, y = train.images[:16].float() / 255, train.labels[:16]
    trainer.probe_cpu_amp(x, y, repeats=1)
    probe = trainer.amp_probe
    assert probe["fp32_step_s"] > 0 and probe["bf16_step_s"] > 0
    assert probe["chosen"] == ("bf16" if probe["bf16_step_s"] < probe["fp32_step_s"] else "fp32")
    assert (trainer.dtype is torch.bfloat16) == (probe["chosen"] == "bf16")
    # The probe ran on a copy: the model (weights and BatchNorm statistics) is untouched.
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert isinstance(cpu_bf16_native(), bool)


# -- C-LEAD variants ---------------------------------------------------------------------------------
def _clead(**options):
    cfg = TrainConfig()
    cfg.attack.steps = 1
    cfg.method.options.update(options)
    resolve(cfg)
    return create_method(_tiny(), cfg), cfg


def _batch():
    torch.manual_seed(1)
    return torch.rand(16, 3, 32, 32), torch.randint(0, 10, (16,))


def test_features_embedding_has_no_head_parameters():
    method, _ = _clead(embed="features", tau=0.2)
    assert not [n for n, _ in method.named_parameters() if n.startswith("head.")]
    out = method.step(*_batch())
    assert torch.isfinite(out["loss"]) and out["contrastive"] > 0
    assert method.settings()["embed"] == "features"


def test_kl_consistency_adds_its_term():
    x, y = _batch()
    with_kl, _ = _clead(kl=2.0)
    torch.manual_seed(2)
    out = with_kl.step(x, y)
    assert "kl" in out and out["kl"] >= 0
    expected = out["ce_adv"] + out["contrastive"] + 2.0 * out["kl"]
    torch.testing.assert_close(out["loss"].detach(), expected, rtol=1e-5, atol=1e-6)


def test_momentum_encoder_is_a_slow_copy_without_gradients():
    method, _ = _clead(target="ema", target_decay=0.5)
    target = method.target.module
    assert all(not p.requires_grad for p in target.parameters())
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.5)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    for _ in range(3):
        out = method.step(*_batch())
        optimizer.zero_grad()
        out["loss"].backward()
        assert all(p.grad is None for p in target.parameters())
        optimizer.step()
        method.after_step()
    after = target.state_dict()
    online = {**{f"model.{k}": v for k, v in method.model.state_dict().items()},
              **{f"head.{k}": v for k, v in method.head.state_dict().items()}}
    moved = [k for k in before if before[k].is_floating_point() and not torch.equal(before[k], after[k])]
    assert moved, "the momentum encoder never moved"
    # ... but it lags: it is not the online model.
    assert any(not torch.allclose(after[k], online[k]) for k in moved)


def test_momentum_encoder_needs_ce_on_the_adversarial_view():
    cfg = TrainConfig()
    cfg.method.options.update(target="ema", ce_on="both")
    with pytest.raises(ValueError, match="--clead-target"):
        resolve(cfg)


@pytest.mark.cifar
@pytest.mark.parametrize("flags", [["--clead-embed", "features", "--tau", "0.2"], ["--clead-kl", "1"],
                                   ["--clead-target", "ema"]])
def test_each_clead_variant_trains_and_resumes(flags, cifar_root, tmp_path):
    out = tmp_path / "run"
    args = ["fit", "--method", "clead", "--data", str(cifar_root), "--out", str(out), *FAST, *flags]
    assert cli.main([*args[:-len(flags)], *flags, "--epochs", "1"]) == 0
    assert cli.main([*args, "--resume"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[-1]["val_clean_acc"] >= rows[-1]["val_robust_acc"]
    settings = load_checkpoint(out / "last.pt")["method_settings"]
    assert settings["embed"] in ("head", "features") and settings["target"] in ("online", "ema")

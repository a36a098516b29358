"""Invariants of every registered attack, on the trained tiny CIFAR-10 model."""

from __future__ import annotations

import pytest
import torch

from training.attacks import attack_names, create_attack

pytestmark = pytest.mark.cifar

EPS = 8 / 255
L2_EPS = 0.5
# Few iterations keep the suite fast; the invariants hold for any step count.
FAST = {"pgd": {"steps": 5}, "pgd-l2": {"steps": 5}, "cw": {"steps": 5}, "apgd-ce": {"steps": 10},
        "apgd-dlr": {"steps": 10}, "apgd-t": {"steps": 5, "n_target_classes": 3},
        "square": {"queries": 100}, "autoattack": {"steps": 5, "queries": 50}}


def _batch(trained_tiny, n=64):
    model, test = trained_tiny
    return model, test.images[:n].float() / 255, test.labels[:n]


def _accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def _build(name, eps, **kw):
    return create_attack(name, eps=eps, **{**FAST.get(name, {}), **kw})


def _eps_for(name):
    return L2_EPS if create_attack(name).norm == "l2" else EPS


@pytest.mark.parametrize("name", attack_names())
def test_attack_stays_in_threat_model_and_lowers_accuracy(trained_tiny, name):
    model, x, y = _batch(trained_tiny)
    eps = _eps_for(name)
    attack = _build(name, eps=eps)
    torch.manual_seed(0)
    x_adv = attack(model, x, y)
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if attack.norm == "linf" else delta.norm(dim=1)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert size.max().item() <= eps + 1e-6
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0
    clean, robust = _accuracy(model, x, y), _accuracy(model, x_adv, y)
    assert robust <= clean
    # An undefended model at these budgets: every attack must find adversarial examples.
    assert robust < clean - 0.1, f"{name} barely changed accuracy ({clean:.2f} -> {robust:.2f})"


@pytest.mark.parametrize("name", attack_names())
def test_eps_zero_changes_nothing(trained_tiny, name):
    model, x, y = _batch(trained_tiny, 16)
    x_adv = _build(name, eps=0.0)(model, x, y)
    assert torch.equal(x_adv, x)
    assert _accuracy(model, x_adv, y) == _accuracy(model, x, y)


@pytest.mark.parametrize("name", attack_names())
def test_attack_restores_model_mode_and_leaves_weights_alone(trained_tiny, name):
    model, x, y = _batch(trained_tiny, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    try:
        _build(name, eps=_eps_for(name))(model, x, y)
        assert model.training, "the attack should restore train mode"
    finally:
        model.eval()
    after = model.state_dict()
    # Attacks run in eval mode, so even BatchNorm running statistics stay put.
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters()), "the weights' requires_grad should be restored"


class _Recorder(torch.nn.Module):
    """The model, recording per forward pass whether autograd was on and whether any weight
    required a gradient."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, []
        self.train(model.training)  # a new module is in train mode; attacks restore the mode they find

    def forward(self, x):
        self.calls.append({"grad": torch.is_grad_enabled() and x.requires_grad,
                           "weights_need_grad": any(p.requires_grad for p in self.model.parameters())})
        return self.model(x)


@pytest.mark.parametrize("restarts", [1, 2])
def test_apgd_runs_one_forward_pass_per_step(trained_tiny, restarts):
    """The fooled check reuses the logits of the gradient's forward pass: per run, one pass for
    the random start and one per step, plus one clean pass for the whole attack."""
    model, x, y = _batch(trained_tiny, 16)
    recorder = _Recorder(model)
    steps = 7
    create_attack("apgd-ce", eps=0.5 / 255, steps=steps, restarts=restarts)(recorder, x, y)
    grad_passes = sum(c["grad"] for c in recorder.calls)
    assert grad_passes == restarts * (steps + 1)
    assert len(recorder.calls) == grad_passes + 1


def test_apgd_objective_on_another_tensor_gets_a_separate_fooled_check(trained_tiny):
    """An objective that feeds the model something other than the attacked images themselves
    (here the same values in a new tensor) gets a second forward pass for the fooled check, and
    the attack is exactly the one with the built-in objective."""
    model, x, y = _batch(trained_tiny, 32)
    indirect = lambda m, xa, t: torch.nn.functional.cross_entropy(m(xa * 1.0), t, reduction="none")  # noqa: E731
    torch.manual_seed(0)
    direct_adv = create_attack("apgd-ce", eps=EPS, steps=10)(model, x, y)
    torch.manual_seed(0)
    recorder = _Recorder(model)
    indirect_adv = create_attack("apgd-ce", eps=EPS, steps=10)(recorder, x, y, objective=indirect)
    assert torch.equal(direct_adv, indirect_adv)
    assert len(recorder.calls) == 1 + 2 * (10 + 1)


def test_torchattacks_runs_with_the_weights_frozen(trained_tiny):
    """torchattacks' FAB calls backward(): the adapter freezes the weights so that only the
    input's gradient is computed, and gives them back their requires_grad afterwards."""
    model, x, y = _batch(trained_tiny, 8)
    recorder = _Recorder(model)
    _build("autoattack", eps=EPS)(recorder, x, y)
    assert recorder.calls and not any(c["weights_need_grad"] for c in recorder.calls)
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


def test_unknown_attack_lists_valid_names():
    with pytest.raises(ValueError) as info:
        create_attack("pgd-inf")
    for name in attack_names():
        assert name in str(info.value)


def test_rejects_images_outside_unit_range(trained_tiny):
    model, x, y = _batch(trained_tiny, 4)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        create_attack("pgd")(model, x * 255, y)


@pytest.mark.parametrize("name", ["fgsm", "pgd", "cw", "apgd-ce", "pgd-l2"])
def test_targeted_attack_reaches_target_more_often_than_chance(trained_tiny, name):
    model, x, y = _batch(trained_tiny, 128)
    target = (y + 1) % 10
    # L2 0.5 is a small budget for reaching a chosen class; give the L2 attack room.
    attack = _build(name, eps=2 * L2_EPS, steps=10, targeted=True) if name == "pgd-l2" else _build(name, eps=EPS, targeted=True)
    torch.manual_seed(0)
    with torch.no_grad():
        hit = (model(attack(model, x, target)).argmax(1) == target).float().mean().item()
    # Chance is 10%; a working targeted attack on an undefended model does far better.
    assert hit > 0.3, f"{name} reached the target on only {hit:.0%} of images"


def test_iterative_pgd_no_weaker_than_fgsm(trained_tiny):
    # A small eps, where neither attack reaches 0% and the comparison says something.
    model, x, y = _batch(trained_tiny, 256)
    eps = 2 / 255
    torch.manual_seed(0)
    fgsm = _accuracy(model, create_attack("fgsm", eps=eps)(model, x, y), y)
    pgd = _accuracy(model, create_attack("pgd", eps=eps, steps=10, alpha=eps / 4)(model, x, y), y)
    clean = _accuracy(model, x, y)
    assert 0 < fgsm < clean
    assert pgd <= fgsm


@pytest.mark.parametrize("name", ["apgd-ce", "apgd-t"])
def test_apgd_not_weaker_than_pgd10(trained_tiny, name):
    model, x, y = _batch(trained_tiny, 128)
    eps = 2 / 255
    torch.manual_seed(0)
    pgd = _accuracy(model, create_attack("pgd", eps=eps, steps=10, alpha=eps / 4)(model, x, y), y)
    kw = {"steps": 20} if name == "apgd-ce" else {"steps": 10, "n_target_classes": 3}
    apgd = _accuracy(model, create_attack(name, eps=eps, **kw)(model, x, y), y)
    # APGD should match or beat PGD-10; allow two images of slack for random starts.
    assert apgd <= pgd + 2 / len(y), f"{name} {apgd:.3f} vs PGD-10 {pgd:.3f}"


def test_more_restarts_never_weaker(trained_tiny):
    model, x, y = _batch(trained_tiny, 128)
    eps = 1 / 255
    torch.manual_seed(0)
    one = _accuracy(model, create_attack("pgd", eps=eps, steps=5)(model, x, y), y)
    torch.manual_seed(0)
    three = _accuracy(model, create_attack("pgd", eps=eps, steps=5, restarts=3)(model, x, y), y)
    # Same seed: the first restart equals the single run, later ones only add successes.
    assert three <= one


@pytest.mark.parametrize("kw, match", [({"eps": -0.1}, "eps"), ({"steps": 0}, "steps"), ({"norm": "l1"}, "norm")])
def test_bad_settings_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        create_attack("pgd", **kw)

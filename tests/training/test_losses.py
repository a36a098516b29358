"""Contrastive losses and the C-LEAD method's pieces."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from training.config import AttackConfig, MethodConfig, ModelConfig, TrainConfig
from training.losses import ntxent_loss, pair_contrastive_per_sample, supcon_loss
from training.methods import create_method
from training.models import create_model


def unit(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def test_ntxent_is_low_for_matching_twins_and_high_for_unrelated_ones():
    z = unit(32, 16, 0)
    aligned = ntxent_loss(z, z, tau=0.1)
    unrelated = ntxent_loss(z, unit(32, 16, 1), tau=0.1)
    assert aligned < 0.1 < unrelated
    # Lower bound for random views: log(2N - 1) when all similarities are equal.
    flat = torch.zeros(4, 8)
    flat[:, 0] = 1
    assert torch.isclose(ntxent_loss(flat, flat, tau=1.0), torch.log(torch.tensor(7.0)))


def test_supcon_rewards_same_label_clusters():
    y = torch.arange(4).repeat_interleave(8)
    centres = unit(4, 16, 2)
    clustered = F.normalize(centres[y] + 0.01 * torch.randn(32, 16), dim=1)
    assert supcon_loss(clustered, clustered, y, 0.1) < supcon_loss(unit(32, 16, 3), unit(32, 16, 4), y, 0.1)


def test_pair_objective_is_per_sample_and_grows_as_twins_separate():
    z = unit(8, 16, 5)
    near = pair_contrastive_per_sample(z, z, 0.1)
    far = pair_contrastive_per_sample(unit(8, 16, 6), z, 0.1)
    assert near.shape == (8,) and (near < far).all()


def cfg(**method) -> TrainConfig:
    return TrainConfig(method=MethodConfig(name="clead", options=method), model=ModelConfig(name="tiny_cnn"),
                       attack=AttackConfig(steps=2))


def test_clead_every_option_combination_gives_a_finite_differentiable_loss():
    torch.manual_seed(0)
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    for loss in ("ntxent", "supcon"):
        for ce_on in ("adv", "clean", "both"):
            for inner in ("ce", "contrastive", "sum"):
                method = create_method(create_model("tiny_cnn"), cfg(loss=loss, ce_on=ce_on, inner=inner))
                out = method.step(x, y)
                assert torch.isfinite(out["loss"])
                out["loss"].backward()
                assert method.head.net[0].weight.grad is not None  # the head is trained
                assert method.model.fc.weight.grad is not None


def test_clead_inner_attack_stays_in_the_ball_and_raises_its_objective():
    torch.manual_seed(0)
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    method = create_method(create_model("tiny_cnn"), cfg(inner="contrastive")).eval()
    x_adv = method.perturb(x, y)["x_adv"]
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        z_clean = method.head(method.model.forward_features(x))
        before = pair_contrastive_per_sample(method.head(method.model.forward_features(x)), z_clean, 0.5).mean()
        after = pair_contrastive_per_sample(method.head(method.model.forward_features(x_adv)), z_clean, 0.5).mean()
    assert after > before


def test_clead_view_options_train_the_classifier_and_stop_gradient_blocks_the_clean_pass():
    torch.manual_seed(0)
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    for views in ("separate", "joint"):
        method = create_method(create_model("tiny_cnn"), cfg(views=views))
        out = method.step(x, y)
        out["loss"].backward()
        assert torch.isfinite(out["loss"]) and method.model.fc.weight.grad is not None
    method = create_method(create_model("tiny_cnn"), cfg(clean_grad=False))
    extra = method.perturb(x, y)
    calls = []
    hook = method.model.conv1.register_forward_hook(lambda m, i, o: calls.append(o.requires_grad))
    out = method(x, y, **extra)
    hook.remove()
    assert calls == [False, True]  # clean pass without autograd, adversarial pass with it
    out["loss"].backward()
    assert method.model.conv1.weight.grad is not None


def test_stop_gradient_needs_ce_on_adv():
    from training.methods import resolve

    with pytest.raises(ValueError, match="--no-clead-clean-grad"):
        resolve(cfg(clean_grad=False, ce_on="both"))

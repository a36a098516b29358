"""C-LEAD: contrastive learning for enhanced adversarial defense (arXiv 2510.27249).

Each clean image and its adversarial twin are two views of one instance; a projection head
maps penultimate features to an L2-normalised embedding in which a contrastive loss pulls
the twins together, while cross-entropy keeps the classifier. The perturbations are found
by an inner maximisation at every step (a min-max, as in Madry et al. 2018), not taken from
a fixed, precomputed set:

    min_{theta, phi}  CE-terms  +  lambda * L_con(g_phi(h(x)), g_phi(h(x_adv)))
    x_adv = argmax_{|x' - x| <= eps}  inner(x')

The paper leaves the details open; each is an option (``CLEADOptions``): ``loss`` ntxent |
supcon, ``tau``, ``weight`` (lambda), ``proj_dim``, ``ce_on`` adv | clean | both, ``inner``
ce | contrastive | sum, ``views`` separate | joint (two forwards, or one over both views),
``clean_grad`` (gradients through the clean view, or a stop-gradient target), ``embed`` head |
features (a projection head, or the penultimate features themselves), ``kl`` (a KL
consistency term beside the contrastive one) and ``target`` online | ema (the clean view
embedded by the model itself or by a momentum encoder). The head and the momentum encoder are
training-only: the exported model is the classifier.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from training.attacks import Attack
from training.config import AttackConfig
from training.ema import WeightEMA
from training.losses import ntxent_loss, pair_contrastive_per_sample, supcon_loss
from training.methods.base import Method
from training.methods.options import Options, fail, option


@dataclass
class CLEADOptions(Options):
    """C-LEAD's options, with the flags of ``clead-train fit``."""

    loss: str = option("ntxent", "--clead-loss", "contrastive loss: ntxent (pair positives) | supcon (label positives)",
                       choices=("ntxent", "supcon"))
    tau: float = option(0.1, "--tau", "temperature (> 0); 0.1 won the ablation in docs/robustness.md",
                        check=lambda v: v > 0, must="> 0")
    weight: float = option(1.0, "--clead-weight", "lambda: weight of the contrastive term",
                           check=lambda v: v >= 0, must=">= 0")
    proj_dim: int = option(128, "--proj-dim", "projection (embedding) dimension", check=lambda v: v >= 1, must=">= 1")
    ce_on: str = option("adv", "--ce-on", "which views carry cross-entropy: adv | clean | both",
                        choices=("adv", "clean", "both"))
    inner: str = option("ce", "--inner", "what the inner attack maximises: ce | contrastive | sum",
                        choices=("ce", "contrastive", "sum"))
    views: str = option("separate", "--clead-views",
                        "forward clean and adv as two batches (separate) or one (joint, as SimCLR)",
                        choices=("separate", "joint"))
    clean_grad: bool = option(True, "--clead-clean-grad",
                              "backpropagate through the clean view (--no-clead-clean-grad: stop-gradient target, cheaper)")
    embed: str = option("head", "--clead-embed",
                        "embedding of the contrastive loss: head (projection MLP) | features (penultimate, Bui et al. 2021)",
                        choices=("head", "features"))
    kl: float = option(0.0, "--clead-kl", "weight of the consistency term KL(p_clean || p_adv) (0 = off)",
                       check=lambda v: v >= 0, must=">= 0")
    target: str = option("online", "--clead-target",
                         "clean-view encoder: online (the model itself) | ema (momentum copy, BYOL/MoCo)",
                         choices=("online", "ema"))
    target_decay: float = option(0.99, "--clead-target-decay", "ema target: per-step decay of the momentum encoder",
                                 check=lambda v: 0 < v < 1, must="in (0, 1)")

    def check_together(self) -> None:
        if not (self.clean_grad or self.ce_on == "adv"):
            fail("--no-clead-clean-grad", f"stops gradients through the clean view, so it needs --ce-on adv "
                                          f"(got {self.ce_on!r})")
        if not (self.target == "online" or self.ce_on == "adv"):
            fail("--clead-target", f"an ema target embeds the clean view without gradients, so it needs --ce-on adv "
                                   f"(got {self.ce_on!r})")


class ProjectionHead(nn.Module):
    """Two-layer MLP to a ``dim``-dimensional unit-norm embedding (SimCLR's head)."""

    def __init__(self, in_dim: int, dim: int, hidden: Optional[int] = None) -> None:
        super().__init__()
        hidden = hidden or in_dim
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(features.float()), dim=1)


class FeatureEmbedding(nn.Module):
    """No projection head: the unit-normalised penultimate features are the embedding, as in
    adversarial supervised contrastive learning (Bui et al. 2021, "Understanding and Achieving
    Efficient Robustness with Adversarial Supervised Contrastive Learning")."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(features.float(), dim=1)


class CLEAD(Method):
    name = "clead"
    adversarial = True
    online_attack = True
    Options = CLEADOptions
    legacy_prefix = "clead_"
    opts: CLEADOptions

    def __init__(self, model: nn.Module, opts: CLEADOptions, attack: Optional[Attack], attack_cfg: AttackConfig,
                 label_smoothing: float = 0.0) -> None:
        super().__init__(model, opts, attack, attack_cfg, label_smoothing)
        self.head = ProjectionHead(model.feature_dim, opts.proj_dim) if opts.embed == "head" else FeatureEmbedding()
        # The momentum encoder (BYOL, Grill et al. 2020; MoCo, He et al. 2020): an EMA copy of
        # classifier and head that embeds the clean view without gradients, so the target moves
        # slowly and the stop-gradient is a real teacher rather than the online model itself.
        self.target = (WeightEMA(nn.ModuleDict({"model": model, "head": self.head}), opts.target_decay)
                       if opts.target == "ema" else None)

    def after_step(self) -> None:
        if self.target is not None:
            self.target.update(nn.ModuleDict({"model": self.model, "head": self.head}))

    @torch.no_grad()
    def clean_target(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, embedding) of the clean view without gradients: from the momentum encoder
        when there is one, else from the online model."""
        if self.target is not None:
            model, head = self.target.module["model"], self.target.module["head"]
        else:
            model, head = self.model, self.head
        features = model.forward_features(x)
        return model.forward_head(features), head(features)

    # -- inner maximisation ---------------------------------------------------------------
    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        inner = self.opts.inner
        if inner == "ce":
            return {"x_adv": self.run_attack(x, y)}
        _, z_clean = self.clean_target(x)
        tau, weight = self.opts.tau, self.opts.weight

        def objective(model, x_adv, y_):
            features = model.forward_features(x_adv)
            con = pair_contrastive_per_sample(self.head(features), z_clean, tau)
            if inner == "contrastive":
                return con
            return F.cross_entropy(model.forward_head(features).float(), y_, reduction="none") + weight * con

        return {"x_adv": self.run_attack(x, y, objective)}

    # -- outer minimisation ---------------------------------------------------------------
    def forward(self, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor = None, **extra) -> dict[str, Any]:
        if self.target is not None or not self.opts.clean_grad:
            # Stop-gradient on the clean view (as BYOL/SimSiam treat their target view): the
            # adversarial view is pulled to a fixed clean embedding and the clean pass needs no
            # backward, which brings the step close to PGD-AT's cost. CE on the clean view is
            # then not trainable, so it needs --ce-on adv.
            logits_clean, z_clean = self.clean_target(x)
            f_adv = self.model.forward_features(x_adv)
            logits_adv, z_adv = self.model.forward_head(f_adv), self.head(f_adv)
        else:
            if self.opts.views == "joint":
                # One pass over the 2N views, as contrastive learners batch their views (SimCLR):
                # BatchNorm sees clean and adversarial images together.
                f_clean, f_adv = self.model.forward_features(torch.cat([x, x_adv])).chunk(2)
            else:
                f_clean, f_adv = self.model.forward_features(x), self.model.forward_features(x_adv)
            logits_clean, logits_adv = self.model.forward_head(f_clean), self.model.forward_head(f_adv)
            z_clean, z_adv = self.head(f_clean), self.head(f_adv)
        if self.opts.loss == "supcon":
            con = supcon_loss(z_clean, z_adv, y, self.opts.tau)
        else:
            con = ntxent_loss(z_clean, z_adv, self.opts.tau)
        ce_adv = self.ce(logits_adv, y)
        ce_clean = self.ce(logits_clean, y)
        ce = {"adv": ce_adv, "clean": ce_clean, "both": 0.5 * (ce_adv + ce_clean)}[self.opts.ce_on]
        loss = ce + self.opts.weight * con
        parts = {"ce_adv": ce_adv.detach(), "ce_clean": ce_clean.detach(), "contrastive": con.detach()}
        if self.opts.kl > 0:
            # Output consistency beside the embedding one (TRADES' KL(p_clean || p_adv); Bui et
            # al. 2021 pair it with their contrastive term too).
            kl = F.kl_div(F.log_softmax(logits_adv.float(), 1), F.softmax(logits_clean.float(), 1), reduction="batchmean")
            loss = loss + self.opts.kl * kl
            parts["kl"] = kl.detach()
        return {"loss": loss, "logits": logits_adv, **parts}

    def settings(self) -> dict[str, Any]:
        settings = self.opts.to_dict()
        if self.opts.target != "ema":
            del settings["target_decay"]  # unused
        return settings


class CLEADFixed(CLEAD):
    """C-LEAD on fixed views: the adversarial twin of each training image was generated once,
    offline, by attacking another (e.g. the trained standard) model (``clead-train views``),
    as the authors' released code appears to do, instead of by an inner maximisation against
    the model being trained. The objective is C-LEAD's; only where ``x_adv`` comes from
    differs. The loader hands each image with its view as six channels (clean, view), cropped
    and flipped together (``training.data.with_views``). A control for what the online
    min-max adds: a model trained this way has never seen its own worst cases.
    """

    name = "clead-fixed"
    online_attack = False
    needs_views = True

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.shape[1] != 6:
            raise ValueError(f"clead-fixed expects (clean, view) pairs as 6 channels, got {x.shape[1]}; "
                             "train it with --fixed-views FILE")
        return {"x_adv": x[:, 3:]}

    def forward(self, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor = None, **extra) -> dict[str, Any]:
        return super().forward(x[:, :3], y, x_adv=x_adv, **extra)

    def settings(self) -> dict[str, Any]:
        return {k: v for k, v in super().settings().items() if k != "inner"}

"""Contrastive losses for C-LEAD.

Both take L2-normalised embeddings of two views per image, ``z_clean`` and ``z_adv``
(N, D), and treat the 2N views as one batch:

* NT-Xent (Chen et al. 2020, SimCLR): the positive of clean_i is adv_i and vice versa; the
  other 2N - 2 views are negatives.
* SupCon (Khosla et al. 2020, "Supervised Contrastive Learning"): every other view with
  the same label is a positive (so clean_i and adv_i always are).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _logits_2n(z_clean: torch.Tensor, z_adv: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    z = torch.cat([z_clean, z_adv]).float()
    sim = z @ z.t() / tau
    self_mask = torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
    return sim.masked_fill(self_mask, float("-inf")), self_mask


def ntxent_loss(z_clean: torch.Tensor, z_adv: torch.Tensor, tau: float) -> torch.Tensor:
    """Mean NT-Xent over the 2N anchors."""
    n = z_clean.shape[0]
    sim, _ = _logits_2n(z_clean, z_adv, tau)
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(sim.device)
    return F.cross_entropy(sim, target)


def supcon_loss(z_clean: torch.Tensor, z_adv: torch.Tensor, y: torch.Tensor, tau: float) -> torch.Tensor:
    """Mean SupCon (the L_out form of Khosla et al.) over the 2N anchors."""
    sim, self_mask = _logits_2n(z_clean, z_adv, tau)
    labels = torch.cat([y, y])
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    log_prob = log_prob.masked_fill(~positives, 0.0)
    return -(log_prob.sum(1) / positives.sum(1).clamp(min=1)).mean()


def pair_contrastive_per_sample(z_adv: torch.Tensor, z_clean: torch.Tensor, tau: float) -> torch.Tensor:
    """Per-sample objective for the inner attack: -log p(adv_i matches clean_i) among all
    clean embeddings. Maximising it pushes each adversarial view away from its clean twin
    in embedding space, the direction the outer contrastive loss then pulls back."""
    sim = z_adv.float() @ z_clean.float().t() / tau
    target = torch.arange(z_adv.shape[0], device=z_adv.device)
    return F.cross_entropy(sim, target, reduction="none")

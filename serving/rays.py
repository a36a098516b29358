"""RayS (Chen & Gu, KDD 2020): a hard-label (decision-based) L-inf attack, on the 8-bit grid.

Written here rather than taken from a library: torchattacks has no decision-based attack, and
IBM ART's HopSkipJump would bring scipy and scikit-learn into the serving environment for one
attack (and HopSkipJump is an L2-first method, slower to reach small L-inf radii). RayS is a
few lines: it searches sign directions ``d`` in {-1, +1}^D, flipping ever smaller blocks of
``d`` (the whole image, halves, quarters, ...), and keeps for each image the smallest radius
``r`` at which ``x + r * d`` is misclassified. Only the predicted label is used.

On the 8-bit grid ``r`` is a whole number of levels, so the radius binary search takes at
most 8 queries. A candidate direction costs one query (is it misclassified at ``r - 1``?),
plus the binary search when it is. All images step together, so each step's queries go out
as one concurrent round.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

# (uint8 NCHW images) -> predicted class index per image, one round of queries.
Classify = Callable[[torch.Tensor], torch.Tensor]
NONE_FOUND = 256  # radius of images with no misclassified point found yet (radii are 1..255)


def rays_attack(classify: Classify, clean: torch.Tensor, labels: torch.Tensor, eps_levels: int,
                queries: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Attack clean-correct uint8 images: (adversarial uint8 images, queries spent per image).

    An image counts as fooled when a direction reaches ``r <= eps_levels``; its adversarial
    image is then ``x + r * d``. Otherwise it gets ``x + eps_levels * d`` along the best
    direction found (the caller's final check classifies it). Each image stops at ``queries``.
    """
    n = len(clean)
    shape = clean.shape[1:]
    x = clean.reshape(n, -1).to(torch.int16)
    dims = x.shape[1]
    d = torch.ones_like(x)
    radius = torch.full((n,), NONE_FOUND, dtype=torch.int16)
    spent = torch.zeros(n, dtype=torch.long)

    def misclassified(idx: torch.Tensor, dirs: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        images = (x[idx] + r[:, None] * dirs).clamp(0, 255).to(torch.uint8).reshape(len(idx), *shape)
        spent[idx] += 1
        return classify(images) != labels[idx]

    stage, block = 0, 0
    max_stage = int(math.ceil(math.log2(dims)))
    while True:
        active = torch.nonzero((radius > eps_levels) & (spent < queries)).flatten()
        if not len(active):
            break
        size = int(math.ceil(dims / 2 ** stage))
        candidate = d[active].clone()
        candidate[:, block * size:(block + 1) * size] *= -1
        check = torch.where(radius[active] == NONE_FOUND, torch.full_like(radius[active], 255), radius[active] - 1)
        hit = misclassified(active, candidate, check)
        idx, dirs = active[hit], candidate[hit]
        d[idx] = dirs
        radius[idx] = search_radius(misclassified, idx, dirs, check[hit], eps_levels, spent, queries)
        block += 1
        if block >= 2 ** stage or block * size >= dims:  # every block of this stage tried: halve them
            stage, block = min(stage + 1, max_stage), 0
    r = torch.minimum(radius, torch.full_like(radius, eps_levels))
    adv = (x + r[:, None] * d).clamp(0, 255).to(torch.uint8).reshape(n, *shape)
    return adv, spent


def search_radius(misclassified: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
                  idx: torch.Tensor, dirs: torch.Tensor, hi: torch.Tensor, eps_levels: int, spent: torch.Tensor,
                  queries: int) -> torch.Tensor:
    """The smallest misclassified radius along ``dirs`` for images ``idx``, known misclassified at ``hi``.

    A binary search in lockstep over all the images (one round of queries per step); an image
    leaves once its radius is at or under ``eps_levels``, or its budget is spent.
    """
    lo, hi = torch.zeros_like(hi), hi.clone()
    while len(idx):
        searching = (hi - lo > 1) & (hi > eps_levels) & (spent[idx] < queries)
        if not bool(searching.any()):
            break
        s = torch.nonzero(searching).flatten()
        mid = (lo[s] + hi[s]) // 2
        adv = misclassified(idx[s], dirs[s], mid)
        hi[s] = torch.where(adv, mid, hi[s])
        lo[s] = torch.where(adv, lo[s], mid)
    return hi

"""Paired comparisons of two models on the same images."""

from __future__ import annotations

import numpy as np
import pytest

from training.paired import mcnemar_exact, paired_difference


def test_mcnemar_matches_the_binomial_tail():
    assert mcnemar_exact(0, 0) == 1.0
    # 10 discordant images all for one side: p = 2 * 0.5**10
    assert mcnemar_exact(10, 0) == pytest.approx(2 / 1024)
    assert mcnemar_exact(5, 5) == 1.0
    assert mcnemar_exact(3, 7) == mcnemar_exact(7, 3)


def test_identical_masks_differ_by_nothing():
    mask = "1100101" * 100
    d = paired_difference(mask, mask)
    assert d.points == 0 and d.low == 0 and d.high == 0 and d.p_value == 1.0 and not d.significant


def test_pairing_is_tighter_than_independent_errors():
    rng = np.random.default_rng(0)
    base = rng.random(1000) < 0.35
    better = base.copy()
    flip = rng.choice(np.flatnonzero(~base), 30, replace=False)  # 30 more images robust, none lost
    better[flip] = True
    d = paired_difference(better, base)
    assert d.points == pytest.approx(3.0) and d.only_a == 30 and d.only_b == 0
    assert d.significant and d.p_value < 1e-6
    independent = 100 * np.sqrt(2 * 0.36 * 0.64 / 1000)  # about 2.1 points: +3 would look like noise
    assert (d.high - d.low) / 2 < 1.96 * independent / 2


def test_masks_must_cover_the_same_images():
    with pytest.raises(ValueError, match="same images"):
        paired_difference("101", "10")

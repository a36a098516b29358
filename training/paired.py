"""Paired comparison of two models evaluated on the same images.

Two robust accuracies measured on the same 1,000 images are not independent: most images are
robust (or broken) for both models, and only the discordant ones carry the difference. Two
independent binomial standard errors overstate the noise; the paired statistics here use the
per-image masks that every ``clead-train eval`` report stores:

* the difference in points with a 95% percentile **bootstrap** interval over images (Efron and
  Tibshirani 1993), resampling image indices so that each image keeps its pair of outcomes;
* the exact **McNemar** test (McNemar 1947) on the discordant images: under "no difference"
  each discordant image is as likely to favour either model, so the count that favours the
  first is Binomial(discordant, 1/2).

Written here rather than taken from scipy/statsmodels because it is twenty lines and the
evaluation environment should not need a statistics stack for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PairedDifference:
    n: int  # images both models were evaluated on
    points: float  # accuracy(a) - accuracy(b), in points
    low: float  # 95% bootstrap interval of the difference, in points
    high: float
    only_a: int  # images robust for a only
    only_b: int  # images robust for b only
    p_value: float  # exact two-sided McNemar

    @property
    def significant(self) -> bool:
        """The interval excludes zero (the difference is unlikely to be sampling noise)."""
        return self.low > 0 or self.high < 0

    def describe(self) -> str:
        return (f"{self.points:+.2f} points, paired 95% CI [{self.low:+.2f}, {self.high:+.2f}], "
                f"McNemar p = {self.p_value:.3g} ({self.only_a} vs {self.only_b} discordant images of {self.n})")


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: P(|X - d/2| >= |only_a - d/2|), X ~ Binomial(d, 1/2)."""
    d = only_a + only_b
    if d == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(d, i) for i in range(k + 1)) / 2 ** d
    return min(1.0, 2 * tail)


def paired_difference(mask_a: str | np.ndarray, mask_b: str | np.ndarray, resamples: int = 10_000,
                      seed: int = 0) -> PairedDifference:
    """Compare two per-image outcome masks ("1" = correct/robust) over the same images."""
    a, b = _as_bool(mask_a), _as_bool(mask_b)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired comparison needs two masks over the same images, got {a.size} and {b.size}")
    n = a.size
    diff = a.astype(np.int8) - b.astype(np.int8)  # +1, 0 or -1 per image
    rng = np.random.default_rng(seed)
    boot = np.empty(resamples)
    for start in range(0, resamples, 1000):  # in blocks: 1000 x n indices at a time
        count = min(1000, resamples - start)
        idx = rng.integers(0, n, size=(count, n))
        boot[start:start + count] = diff[idx].mean(axis=1)
    low, high = np.percentile(boot, [2.5, 97.5]) * 100
    only_a, only_b = int((diff > 0).sum()), int((diff < 0).sum())
    return PairedDifference(n, 100 * float(diff.mean()), float(low), float(high), only_a, only_b,
                            mcnemar_exact(only_a, only_b))


def _as_bool(mask: str | np.ndarray) -> np.ndarray:
    if isinstance(mask, str):
        return np.frombuffer(mask.encode(), dtype=np.uint8) == ord("1")
    return np.asarray(mask, dtype=bool)

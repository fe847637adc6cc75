"""The statistics of reports and regression checks; this module imports nothing of ours.

- :func:`wilson_interval`: 95 % Wilson score interval of an accuracy (in percent);
- :func:`mean_interval`: Student-t interval of a mean (e.g. ‖e‖₂ of the successes);
- :func:`mcnemar_exact`: two-sided exact McNemar test of paired per-image outcomes;
- :func:`two_proportion`: two-sided pooled two-proportion z-test (unpaired outcomes);
- :func:`above_chance_p` / :func:`at_chance`: one-sided binomial test of a clean accuracy
  against guessing one of K classes.
"""

from __future__ import annotations

import math


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval for k successes out of n, in percent."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (100 * max(0.0, centre - half), 100 * min(1.0, centre + half))


def mean_interval(values, level: float = 0.95, lower_bound: float | None = None) -> tuple[float, float]:
    """Student-t interval of the mean of ``values`` (e.g. ‖e‖₂ of the successes); NaN below 2.
    ``lower_bound``: the smallest mean there can be (0 for a norm); the interval is cut there,
    which keeps its coverage (the true mean is never below it) and never shows a negative norm."""
    import numpy as np
    from scipy import stats

    v = np.asarray([float(x) for x in values], dtype=float)
    v = v[np.isfinite(v)]
    if len(v) < 2:
        return (math.nan, math.nan)
    half = stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    lo = float(v.mean() - half)
    return (lo if lower_bound is None else max(lo, lower_bound), float(v.mean() + half))


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts b (1→0) and c (0→1)."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
    return min(1.0, 2.0 * tail)


def two_proportion(k1: int, n1: int, k2: int, n2: int) -> float:
    """Two-sided pooled two-proportion z-test p-value."""
    if n1 == 0 or n2 == 0:
        return math.nan
    p = (k1 + k2) / (n1 + n2)
    se = math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0 if k1 / n1 == k2 / n2 else 0.0
    z = (k1 / n1 - k2 / n2) / se
    return math.erfc(abs(z) / math.sqrt(2))


CHANCE_ALPHA = 0.01  # a clean accuracy not above chance at this level: the classifier does not classify


def above_chance_p(correct: int, n: int, n_classes: int) -> float:
    """P(at least ``correct`` of ``n`` right by guessing one of ``n_classes`` uniformly): the
    one-sided binomial test of a clean accuracy against chance."""
    from scipy.stats import binom

    return float(binom.sf(correct - 1, n, 1.0 / n_classes)) if n_classes > 0 and n > 0 else 1.0


def at_chance(correct: int, n: int, n_classes: int, alpha: float = CHANCE_ALPHA) -> bool:
    """``correct`` of ``n`` is not above chance (1/``n_classes``) at level ``alpha``."""
    return n > 0 and above_chance_p(correct, n, n_classes) > alpha


#: what to check when a clean accuracy is at chance (the audit's remedy, run's warning)
CHANCE_REMEDY = ("check what the defense expects: scbench feeds float images in [0, 1], NCHW, RGB, unnormalised (a "
                 "model trained on [0, 255], mean/std-normalised or BGR inputs must convert them in its forward), "
                 "the dataset's label order, and its weights")


def chance_evidence(correct: int, n: int, n_classes: int) -> str:
    """The one line saying a clean accuracy is not above chance, with the test's p-value."""
    return (f"clean accuracy {100 * correct / n:.1f}% ({correct}/{n}) is not above chance (1/{n_classes}; one-sided "
            f"binomial test p = {above_chance_p(correct, n, n_classes):.2g})")

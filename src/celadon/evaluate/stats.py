"""Multi-seed statistics that mean what they say, built on scipy.stats.

- Per-arm means get a Student-t interval over seeds (a percentile bootstrap over 3 seeds is just their range).
- An arm is compared with the baseline by the paired difference per seed: t-interval and paired t-test
  (`scipy.stats.ttest_1samp` on the differences), exact under normal seed noise and honest at 3-10 seeds.
- Per-image top-1 is compared by the exact McNemar test (`scipy.stats.binomtest` on the discordant pairs).
- A crossed (seeds x test images) bootstrap covers test-set sampling too (`hierarchical_bootstrap`).
- Holm's step-down adjustment controls the family-wise error over many comparisons; `adjusted_level` turns
  an adjusted p back into the interval level that agrees with it.
- `detectable_effect` and `seeds_needed` say what a run could have seen, from the noncentral t.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

from celadon.errors import CeladonError


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def __str__(self) -> str:
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}]"


def _finite(values: Sequence[float], what: str) -> np.ndarray:
    data = np.asarray(values, dtype=float)
    if data.size == 0 or not np.isfinite(data).all():
        raise CeladonError(f"{what} needs finite values, got {list(values)}")
    return data


def t_bounds(mean: float, sd: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Student-t interval of a mean from its sample sd and count (NaN with one value; a point when sd is 0)."""
    if n < 2:
        return float("nan"), float("nan")
    if sd == 0:
        return mean, mean
    low, high = stats.t.interval(level, n - 1, loc=mean, scale=sd / np.sqrt(n))
    return float(low), float(high)


def t_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """Mean and Student-t interval of the mean (NaN bounds with one value; a point when all values agree)."""
    data = _finite(values, "a t-interval")
    sd = float(data.std(ddof=1)) if data.size > 1 else float("nan")
    return Interval(float(data.mean()), *t_bounds(float(data.mean()), sd, int(data.size), level), int(data.size))


@dataclass(frozen=True)
class PairedTest:
    """mean(arm - baseline) over shared seeds, its t-interval, two-sided paired t-test p, and the sd."""

    difference: float
    low: float
    high: float
    p: float
    sd: float
    n: int


def _differences(arm: Mapping[int, float], baseline: Mapping[int, float]) -> np.ndarray:
    shared = sorted(set(arm) & set(baseline))
    if not shared:
        raise CeladonError("no seed was run in both arms; a paired difference needs the same seeds")
    return _finite([arm[s] - baseline[s] for s in shared], "a paired difference")


def paired_t(arm: Mapping[int, float], baseline: Mapping[int, float], level: float = 0.95) -> PairedTest:
    d = _differences(arm, baseline)
    interval = t_interval(d, level)
    if d.size < 2:
        return PairedTest(interval.mean, interval.low, interval.high, float("nan"), float("nan"), 1)
    sd = float(d.std(ddof=1))
    p = 1.0 if sd == 0 and d.mean() == 0 else (0.0 if sd == 0 else float(stats.ttest_1samp(d, 0.0).pvalue))
    return PairedTest(interval.mean, interval.low, interval.high, p, sd, int(d.size))


def mcnemar_exact(arm_only: int, baseline_only: int) -> float:
    """Exact two-sided McNemar p: of the images exactly one model gets right, is the split 50:50?"""
    n = arm_only + baseline_only
    return 1.0 if n == 0 else float(stats.binomtest(arm_only, n, 0.5).pvalue)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN entries are left out of the family and stay NaN)."""
    p = np.asarray(pvalues, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    valid = np.flatnonzero(np.isfinite(p))
    m = valid.size
    order = valid[np.argsort(p[valid], kind="stable")]
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted


def adjusted_level(p: float, p_adjusted: float, alpha: float = 0.05) -> float:
    """The confidence level whose interval agrees with the adjusted test: Holm rejects iff p_adjusted < alpha,
    and the level-(1 - alpha * p / p_adjusted) t-interval excludes zero iff p < alpha * p / p_adjusted."""
    if not (np.isfinite(p) and np.isfinite(p_adjusted)) or p_adjusted <= 0:
        return 1 - alpha
    return 1 - alpha * p / p_adjusted


def _power(effect: float, sd: float, n: int, alpha: float) -> float:
    df = n - 1
    critical = stats.t.ppf(1 - alpha / 2, df)
    noncentrality = effect / sd * np.sqrt(n)
    # the far tail is negligible but scipy's nct can return NaN for it at large noncentrality
    return float(np.nan_to_num(stats.nct.sf(critical, df, noncentrality))
                 + np.nan_to_num(stats.nct.cdf(-critical, df, noncentrality)))


def detectable_effect(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true mean difference a two-sided paired t-test over n seeds detects with `power` at `alpha`,
    given the seed-to-seed sd of the differences (NaN when it cannot be computed)."""
    if n < 2 or not np.isfinite(sd) or sd <= 0:
        return float("nan")
    upper = sd
    while _power(upper, sd, n, alpha) < power:
        upper *= 4
        if upper > 1e6 * sd:
            return float("inf")
    return float(optimize.brentq(lambda e: _power(e, sd, n, alpha) - power, 0.0, upper))


def seeds_needed(effect: float, sd: float, alpha: float = 0.05, power: float = 0.8, most: int = 1000) -> int | None:
    """Seeds a paired t-test needs to detect `effect` with `power` (None: more than `most`, or unknown)."""
    if not (np.isfinite(effect) and np.isfinite(sd)) or effect == 0 or sd <= 0:
        return None
    for n in range(2, most + 1):
        if _power(abs(effect), sd, n, alpha) >= power:
            return n
    return None


def image_weights(n_images: int, resamples: int, seed: int = 0) -> np.ndarray:
    """(resamples, n_images) bootstrap counts: how often each test image is drawn in each replicate."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_images, np.full(n_images, 1.0 / n_images), size=resamples).astype(np.float64)


def hierarchical_bootstrap(per_seed: np.ndarray, seed: int = 0) -> np.ndarray:
    """Replicates of the mean over seeds of a per-seed difference, resampling test images and seeds.

    `per_seed[b, s]` is the metric difference (arm - baseline) of seed s on the b-th resample of the test images
    (`image_weights`). That resample must be the *same* for every seed and both arms: one test set serves all
    of them, so its sampling noise is shared (resampling images independently per seed would shrink it by the
    number of seeds). Seeds are then resampled with replacement, independently per replicate.
    """
    per_seed = np.asarray(per_seed, dtype=float)
    if per_seed.ndim != 2 or per_seed.shape[1] < 1:
        raise CeladonError("the bootstrap needs a (resamples, seeds) array with at least one seed")
    rng = np.random.default_rng(seed + 1)
    pick = rng.integers(0, per_seed.shape[1], per_seed.shape)
    return np.take_along_axis(per_seed, pick, axis=1).mean(axis=1)


def percentile_interval(replicates: np.ndarray, level: float) -> tuple[float, float]:
    finite = replicates[np.isfinite(replicates)]
    if finite.size == 0:
        return float("nan"), float("nan")
    tail = (1 - level) / 2
    low, high = np.quantile(finite, [tail, 1 - tail])
    return float(low), float(high)

"""Multi-seed statistics that mean what they say, built on scipy.stats.

- Per-arm means get a Student-t interval over seeds (a percentile bootstrap over 3 seeds is just their range).
- An arm is compared with the baseline by the paired difference per seed: t-interval and paired t-test
  (`scipy.stats.ttest_1samp` on the differences), exact under normal seed noise and honest at 3-10 seeds;
  differences that are all equal get the exact sign-flip p (2 / 2^n), not 0.
- Per-image top-1 is also tested by the exact McNemar test per seed (`scipy.stats.binomtest` on the
  discordant pairs), as a description only: seeds share one test set, so McNemar pooled over seeds rejected
  23% of the time at a nominal 5% in a simulation, and it never sets a verdict.
- `combined_interval` also covers test-set sampling: the seed variance of the mean difference plus its
  variance under a class-stratified bootstrap of the test images (one resample shared by every seed and arm),
  with Satterthwaite's degrees of freedom and a t quantile (a percentile bootstrap over 3 seeds covered ~75%).
- Holm's step-down adjustment controls the family-wise error over many comparisons; `adjusted_level` turns
  an adjusted p back into the level at which an interval agrees with the adjusted test (a Holm-matched
  interval: it excludes zero exactly when the adjusted p is below alpha; it is not a simultaneous interval).
- `share_of_gain` is a generator's gain as a share of the oracle's, seed by seed paired, with Fieller's
  interval: bounded only where the oracle's own gain is clear at that level (otherwise no share is defined).
- `detectable_effect`, `seeds_needed` and `images_needed` say what a run could have seen, from the noncentral t,
  for a declared effect of interest, a sd pooled over the arms and the test images' variance (never the observed
  difference: that is post-hoc power). The verdict rule needs the interval over seeds *and* test images to
  exclude zero, so the test set bounds what any number of seeds can detect.
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
    if sd <= 1e-12 * max(1.0, abs(float(d.mean()))):  # float noise of equal differences counts as equal
        sd = 0.0
    if sd == 0:  # every seed moved by the same amount: the exact sign-flip test (all signs alike is 2 of 2^n)
        p = 1.0 if d.mean() == 0 else min(1.0, 2.0 / 2.0 ** d.size)
    else:
        p = float(stats.ttest_1samp(d, 0.0).pvalue)
    return PairedTest(interval.mean, interval.low, interval.high, p, sd, int(d.size))


@dataclass(frozen=True)
class Share:
    """mean(gain) / mean(oracle gain) over shared seeds, with Fieller's interval (None: not bounded)."""

    share: float | None
    low: float | None
    high: float | None
    n: int


def share_of_gain(gain: Mapping[int, float], oracle_gain: Mapping[int, float], level: float = 0.95) -> Share:
    """Fieller's interval for a ratio of paired means: the set of shares r for which mean(gain - r x oracle
    gain) = 0 is not rejected by a t-test at `level`. It is a bounded interval exactly when the oracle's mean gain
    itself differs from zero at that level; then a share is defined, else every bound is None."""
    shared = sorted(set(gain) & set(oracle_gain))
    a = np.array([gain[s] for s in shared], dtype=float)
    b = np.array([oracle_gain[s] for s in shared], dtype=float)
    n = len(shared)
    if n < 2:
        return Share(None, None, None, n)
    t = float(stats.t.ppf(0.5 + level / 2, n - 1))
    ma, mb = a.mean(), b.mean()
    vaa, vbb, vab = np.var(a, ddof=1) / n, np.var(b, ddof=1) / n, np.cov(a, b, ddof=1)[0, 1] / n
    quadratic = mb ** 2 - t ** 2 * vbb  # > 0 exactly when the oracle's gain is clear at this level
    if quadratic <= 0:
        return Share(None, None, None, n)
    linear, constant = ma * mb - t ** 2 * vab, ma ** 2 - t ** 2 * vaa
    root = np.sqrt(max(linear ** 2 - quadratic * constant, 0.0))
    return Share(float(ma / mb), float((linear - root) / quadratic), float((linear + root) / quadratic), n)


def combined_interval(differences: Sequence[float], image_variance: float, image_df: int,
                      level: float = 0.95) -> tuple[float, float, float]:
    """(low, high, df) for the mean paired difference, covering the seeds and the test images: variance
    s_d^2 / n (seeds, n - 1 df) + `image_variance` (the test-image resampling variance of the mean difference,
    `image_df` df), Satterthwaite's df, a t quantile. NaN bounds with one seed."""
    d = _finite(differences, "a combined interval")
    if d.size < 2 or not np.isfinite(image_variance):
        return float("nan"), float("nan"), float("nan")
    seeds = float(d.var(ddof=1)) / d.size
    total = seeds + max(image_variance, 0.0)
    mean = float(d.mean())
    if total == 0:
        return mean, mean, float("inf")
    denominator = seeds ** 2 / (d.size - 1) + (max(image_variance, 0.0) ** 2 / image_df if image_df > 0 else 0.0)
    df = total ** 2 / denominator if denominator > 0 else float("inf")
    half = float(stats.t.ppf((1 + level) / 2, df)) * np.sqrt(total)
    return mean - half, mean + half, float(df)


def pooled_sd(sds: Sequence[float], counts: Sequence[int]) -> float:
    """The sd of paired differences pooled over arms (each weighted by its n - 1 degrees of freedom)."""
    pairs = [(sd, n) for sd, n in zip(sds, counts, strict=True) if n >= 2 and np.isfinite(sd)]
    df = sum(n - 1 for _, n in pairs)
    return float(np.sqrt(sum((n - 1) * sd ** 2 for sd, n in pairs) / df)) if df else float("nan")


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


def verdict_power(effect: float, sd: float, n: int, alpha: float, image_variance: float = 0.0,
           image_df: float = np.inf) -> float:
    """Power of the verdict rule at a true difference `effect`: the paired t over n seeds and, when the test
    images add variance, the interval over seeds and images (Satterthwaite's df) must both reject. Their joint
    power is at most the smaller of the two, which is what this returns."""

    def two_sided(noncentrality: float, df: float) -> float:
        critical = stats.t.ppf(1 - alpha / 2, df)
        # the far tail is negligible but scipy's nct can return NaN for it at large noncentrality
        return float(np.nan_to_num(stats.nct.sf(critical, df, noncentrality))
                     + np.nan_to_num(stats.nct.cdf(-critical, df, noncentrality)))

    seeds = two_sided(effect / sd * np.sqrt(n), n - 1)
    if image_variance <= 0:
        return seeds
    seed_variance = sd ** 2 / n
    total = seed_variance + image_variance
    df = total ** 2 / (seed_variance ** 2 / (n - 1) + image_variance ** 2 / image_df)
    return min(seeds, two_sided(effect / np.sqrt(total), df))


def detectable_effect(sd: float, n: int, alpha: float = 0.05, power: float = 0.8, image_variance: float = 0.0,
                      image_df: float = np.inf) -> float:
    """Smallest true mean difference the verdict rule detects with `power` at `alpha` over n seeds, given the
    seed-to-seed sd of the differences and the test images' variance of the mean difference (0: seeds only;
    NaN when it cannot be computed)."""
    if n < 2 or not np.isfinite(sd) or sd <= 0 or not np.isfinite(image_variance):
        return float("nan")
    rule = lambda e: verdict_power(e, sd, n, alpha, image_variance, image_df) - power  # noqa: E731
    upper = sd
    while rule(upper) < 0:
        upper *= 4
        if upper > 1e6 * sd:
            return float("inf")
    return float(optimize.brentq(rule, 0.0, upper))


def seeds_needed(effect: float, sd: float, alpha: float = 0.05, power: float = 0.8, most: int = 1000,
                 image_variance: float = 0.0, image_df: float = np.inf) -> int | None:
    """Seeds the verdict rule needs to detect `effect` with `power` (None: more than `most`, unknown, or out of
    reach of seeds because the test images' variance alone is too large: see `images_needed`)."""
    if not (np.isfinite(effect) and np.isfinite(sd) and np.isfinite(image_variance)) or effect == 0 or sd <= 0:
        return None
    if verdict_power(abs(effect), sd, most, alpha, image_variance, image_df) < power:
        return None  # not even `most` seeds: the test images' share alone can be too wide for any number
    for n in range(2, most + 1):
        if verdict_power(abs(effect), sd, n, alpha, image_variance, image_df) >= power:
            return n
    return None


def images_needed(effect: float, sd: float, n: int, image_variance: float, images: int, alpha: float = 0.05,
                  power: float = 0.8, most: int = 1_000_000) -> int | None:
    """Test images with which n seeds give the verdict rule `power` for `effect`, taking the test images'
    variance of the mean difference to shrink as 1 / images from the `images` it was measured on (None: the
    seeds' own variance is already too large, or more than `most` images, or unknown)."""
    if not (np.isfinite(effect) and np.isfinite(sd) and np.isfinite(image_variance)) or effect == 0 or n < 2 \
            or sd <= 0 or image_variance <= 0:
        return None

    def enough(count: int) -> bool:
        return verdict_power(abs(effect), sd, n, alpha, image_variance * images / count, count - 1) >= power

    if not enough(most):
        return None
    low, high = 1, most  # enough(high), and fewer than 2 images is never enough
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if enough(middle) else (middle, high)
    return high


def image_weights(n_images: int, resamples: int, seed: int = 0, strata: Sequence | None = None) -> np.ndarray:
    """(resamples, n_images) bootstrap counts: how often each test image is drawn in each replicate. With
    `strata` (a class per image), images are drawn within their class, so every replicate keeps the test
    set's class counts (a rare class cannot vanish from a replicate)."""
    rng = np.random.default_rng(seed)
    if strata is None:
        return rng.multinomial(n_images, np.full(n_images, 1.0 / n_images), size=resamples).astype(np.float64)
    labels = np.asarray(strata)
    if labels.shape != (n_images,):
        raise CeladonError(f"strata: one class per test image ({n_images}), got {labels.shape}")
    weights = np.zeros((resamples, n_images))
    for value in sorted(set(labels.tolist()), key=str):
        members = np.flatnonzero(labels == value)
        weights[:, members] = rng.multinomial(members.size, np.full(members.size, 1.0 / members.size),
                                              size=resamples)
    return weights

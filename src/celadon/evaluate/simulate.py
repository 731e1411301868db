"""`celadon bench stats`: how the study's statistics behave at our seed counts, by simulation.

A test set of `images` images is drawn from a population (each image's chance of being read right, p_i, from a
Beta(2, 1.3): about 0.6 on average, as the demo's classifiers). Each arm x seed reads image i right with chance
sigmoid(logit(p_i) + u + delta), u ~ N(0, seed_sd) the seed's own luck (shared by all its images), delta the
arm's true effect on the logit scale (0 for the baseline). Every seed of both arms reads the same test set, as
in a study. The estimand is the population difference in top-1 over images and seeds; it is 0 under delta = 0.

For each replicate the study's rules are applied to top-1: the paired t over seeds (its verdict: adjusted p =
p for one comparison, and both intervals excluding zero), the interval that also covers the test images
(`stats.combined_interval`, image variance from a shared image bootstrap), and, for comparison, the exact
McNemar test pooled over seeds that earlier versions used. It reports each test's rejection rate under
delta = 0 (type-I error, nominal `alpha`) and each interval's coverage of the population difference.
"""

from __future__ import annotations

import numpy as np
from scipy import special, stats

from celadon.evaluate.stats import combined_interval, mcnemar_exact, paired_t, verdict_power


def _population_difference(delta: float, seed_sd: float, draws: int = 400_000, seed: int = 99) -> float:
    """E[sigmoid(logit p + u + delta) - sigmoid(logit p + u)] over images and seeds, by Monte Carlo."""
    if delta == 0:
        return 0.0
    rng = np.random.default_rng(seed)
    logit = special.logit(rng.beta(2.0, 1.3, draws)) + rng.normal(0, seed_sd, draws)
    return float(np.mean(special.expit(logit + delta) - special.expit(logit)))


def simulate(seeds: int, images: int = 271, seed_sd: float = 0.15, delta: float = 0.0, reps: int = 400,
             resamples: int = 200, alpha: float = 0.05, seed: int = 0) -> dict:
    """Rejection rates and interval coverage of the study's rules over `reps` simulated studies."""
    rng = np.random.default_rng(seed)
    truth = _population_difference(delta, seed_sd)
    counts = {"t_rejects": 0, "verdict_rejects": 0, "pooled_mcnemar_rejects": 0, "t_covers": 0,
              "combined_covers": 0}
    spread, seed_variances, image_variances = [], [], []
    for _ in range(reps):
        logit = special.logit(rng.beta(2.0, 1.3, images))
        right = {}
        for arm, shift in (("baseline", 0.0), ("arm", delta)):
            luck = rng.normal(0, seed_sd, (seeds, 1))
            right[arm] = rng.random((seeds, images)) < special.expit(logit + luck + shift)
        accuracy = {arm: r.mean(axis=1) for arm, r in right.items()}
        spread.append(float(np.std(accuracy["baseline"], ddof=1)))
        differences = accuracy["arm"] - accuracy["baseline"]
        test = paired_t(dict(enumerate(accuracy["arm"])), dict(enumerate(accuracy["baseline"])))
        weights = rng.multinomial(images, np.full(images, 1.0 / images), size=resamples)  # shared by all seeds
        per_image = (right["arm"].astype(float) - right["baseline"]).mean(axis=0)  # mean over seeds, per image
        image_variance = float(np.var(weights @ per_image / images, ddof=1))
        low, high, _ = combined_interval(differences, image_variance, images - 1, 1 - alpha)
        seed_variances.append(float(np.var(differences, ddof=1)))
        image_variances.append(image_variance)
        arm_only = int((right["arm"] & ~right["baseline"]).sum())
        base_only = int((right["baseline"] & ~right["arm"]).sum())
        counts["t_rejects"] += test.p < alpha
        counts["verdict_rejects"] += test.p < alpha and (low > 0 or high < 0)
        counts["pooled_mcnemar_rejects"] += mcnemar_exact(arm_only, base_only) < alpha
        counts["t_covers"] += test.low <= truth <= test.high
        counts["combined_covers"] += low <= truth <= high
    rates = {k.replace("_rejects", "_rejection_rate").replace("_covers", "_coverage"): v / reps
             for k, v in counts.items()}
    # What `stats.verdict_power` predicts for the verdict rule from the variances a study would see, and what the
    # seeds-only formula (earlier versions' report) predicted: the simulated verdict rate tells which is right.
    sd, image_variance = float(np.sqrt(np.mean(seed_variances))), float(np.mean(image_variances))
    predicted = {"predicted_verdict_power": verdict_power(truth, sd, seeds, alpha, image_variance, images - 1),
                 "predicted_seeds_only_power": verdict_power(truth, sd, seeds, alpha)} if truth else {}
    return {"seeds": seeds, "images": images, "delta_logit": delta, "population_difference": truth,
            "seed_sd_of_top1": float(np.mean(spread)), "reps": reps, "alpha": alpha, **rates, **predicted,
            "monte_carlo_se": float(np.sqrt(alpha * (1 - alpha) / reps))}


def binomial_interval(rate: float, reps: int) -> tuple[float, float]:
    """Clopper-Pearson 95% interval of a simulated rate."""
    hits = round(rate * reps)
    result = stats.binomtest(hits, reps).proportion_ci(0.95)
    return float(result.low), float(result.high)

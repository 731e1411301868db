"""Multi-seed statistics against scipy reference values and cases whose answer is known exactly."""

import numpy as np
import pytest
from scipy import stats

from celadon.errors import CeladonError
from celadon.evaluate.stats import (
    adjusted_level,
    detectable_effect,
    hierarchical_bootstrap,
    holm,
    image_weights,
    mcnemar_exact,
    paired_t,
    percentile_interval,
    seeds_needed,
    t_interval,
)


def test_t_interval_is_scipys_student_t_interval_of_the_mean():
    values = [0.60, 0.70, 0.95]
    interval = t_interval(values)
    low, high = stats.t.interval(0.95, 2, loc=np.mean(values), scale=stats.sem(values))
    assert (interval.mean, interval.low, interval.high, interval.n) == pytest.approx((0.75, low, high, 3))
    # With three values the bootstrap's "interval" was their range, [0.60, 0.95]; the t-interval is honest.
    assert interval.low < 0.60 - 0.2 and interval.high > 0.95 + 0.2
    one = t_interval([0.5])
    assert one.mean == 0.5 and np.isnan(one.low) and one.n == 1
    assert t_interval([0.5, 0.5, 0.5]).low == t_interval([0.5, 0.5, 0.5]).high == 0.5


def test_paired_t_matches_scipys_paired_test_and_removes_the_shared_seed_effect():
    baseline = {0: 0.40, 1: 0.61, 2: 0.80, 3: 0.55}
    arm = {0: 0.43, 1: 0.62, 2: 0.83, 3: 0.56, 9: 0.99}  # seed 9 has no partner and is left out
    test = paired_t(arm, baseline)
    shared = [0, 1, 2, 3]
    reference = stats.ttest_rel([arm[s] for s in shared], [baseline[s] for s in shared])
    assert test.n == 4 and test.difference == pytest.approx(0.02)
    assert test.p == pytest.approx(reference.pvalue)
    low, high = reference.confidence_interval(0.95)
    assert (test.low, test.high) == pytest.approx((low, high))
    assert test.low > 0  # the pairing removes the large seed-to-seed spread both arms share
    assert stats.ttest_ind([arm[s] for s in shared], [baseline[s] for s in shared]).pvalue > 0.5
    with pytest.raises(CeladonError, match="same seeds"):
        paired_t({5: 1.0}, baseline)


def test_mcnemar_is_the_exact_binomial_test_on_discordant_pairs():
    # 1 vs 6 discordant images: p = 2 * P(X <= 1), X ~ Bin(7, 1/2) = 2 * (1 + 7) / 128, by hand.
    assert mcnemar_exact(1, 6) == pytest.approx(0.125)
    assert mcnemar_exact(6, 1) == pytest.approx(0.125)
    assert mcnemar_exact(30, 12) == pytest.approx(stats.binomtest(30, 42, 0.5).pvalue)
    assert mcnemar_exact(0, 0) == 1.0


def test_holm_adjusts_by_hand_computed_step_down_values():
    # sorted: 0.01 x 4 = 0.04; 0.03 x 3 = 0.09; 0.04 x 2 = 0.08 -> monotone 0.09; 0.20 x 1 = 0.20
    adjusted = holm([0.01, 0.04, 0.03, 0.20])
    assert adjusted == pytest.approx([0.04, 0.09, 0.09, 0.20])
    # NaN (no test possible) stays NaN and does not count in the family; values cap at 1.
    adjusted = holm([0.5, np.nan, 0.4])
    assert np.isnan(adjusted[1]) and adjusted[0] == pytest.approx(0.8) and adjusted[2] == pytest.approx(0.8)
    assert holm([0.6, 0.7, 0.9]) == pytest.approx([1.0, 1.0, 1.0])


def test_adjusted_level_makes_the_t_interval_agree_with_the_adjusted_test():
    differences = np.array([0.02, 0.03, 0.025, 0.01, 0.04])
    p = stats.ttest_1samp(differences, 0).pvalue
    for p_adjusted in (p * 3, 0.049, 0.051):
        level = adjusted_level(p, p_adjusted)
        low, _ = stats.ttest_1samp(differences, 0).confidence_interval(level)
        assert (low > 0) == (p_adjusted < 0.05)


def test_hierarchical_bootstrap_matches_the_exact_crossed_resampling_distribution():
    # Two seeds, two test images; seed 0's arm beats the baseline on image 0 only, seed 1 ties everywhere.
    # Image resamples (2,0), (1,1), (0,2) have chances 1/4, 1/2, 1/4 and give seed 0 a mean difference of
    # 1, 1/2, 0; seed resamples {0,0}, {0,1}, {1,1} have chances 1/4, 1/2, 1/4. By hand, the replicate is
    # 1 with chance 1/16, 1/2 with 1/4, 1/4 with 1/4, 0 with 7/16.
    differences = np.array([[1.0, 0.0], [0.0, 0.0]])  # seed x image
    weights = image_weights(2, 200_000, seed=1)
    per_seed = np.stack([weights @ differences[s] / 2 for s in range(2)], axis=1)
    replicates = hierarchical_bootstrap(per_seed, seed=1)
    for value, chance in ((1.0, 1 / 16), (0.5, 1 / 4), (0.25, 1 / 4), (0.0, 7 / 16)):
        assert np.mean(np.isclose(replicates, value)) == pytest.approx(chance, abs=0.005)
    assert replicates.mean() == pytest.approx(0.25, abs=0.005)
    # The same image resample serves every seed: the image noise is not averaged away across seeds.
    assert (weights.sum(axis=1) == 2).all()
    assert percentile_interval(replicates, 0.95) == (0.0, 1.0)


def test_detectable_effect_has_the_stated_power_and_seeds_needed_is_the_smallest_such_count():
    sd, n = 0.04, 5
    effect = detectable_effect(sd, n)
    critical = stats.t.ppf(0.975, n - 1)
    power = stats.nct.sf(critical, n - 1, effect / sd * np.sqrt(n)) + stats.nct.cdf(-critical, n - 1,
                                                                                      effect / sd * np.sqrt(n))
    assert power == pytest.approx(0.8, abs=1e-6)
    assert detectable_effect(sd, 10) < effect < detectable_effect(sd, 3)
    assert detectable_effect(sd, 5, alpha=0.01) > effect  # a stricter level needs a larger effect
    need = seeds_needed(effect, sd)
    assert need == n  # the effect detectable with 5 seeds needs 5 seeds, not 4
    assert seeds_needed(0.0, sd) is None and np.isnan(detectable_effect(0.0, 5))

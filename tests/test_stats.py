"""Multi-seed statistics against scipy reference values and cases whose answer is known exactly."""

import numpy as np
import pytest
from scipy import stats

from celadon.errors import CeladonError
from celadon.evaluate.stats import (
    adjusted_level,
    combined_interval,
    detectable_effect,
    holm,
    image_weights,
    images_needed,
    mcnemar_exact,
    paired_t,
    pooled_sd,
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


def test_equal_differences_get_the_exact_sign_flip_p_not_zero():
    # every seed +0.01: of the 2^3 sign patterns, 2 (all +, all -) are as extreme: p = 2/8, by hand
    test = paired_t({0: 0.51, 1: 0.61, 2: 0.71}, {0: 0.50, 1: 0.60, 2: 0.73})  # not all equal: the t-test
    assert test.p == pytest.approx(stats.ttest_rel([0.51, 0.61, 0.71], [0.50, 0.60, 0.73]).pvalue)
    rounded = paired_t({0: 0.51, 1: 0.61, 2: 0.71}, {0: 0.50, 1: 0.60, 2: 0.70})  # equal but for float noise
    assert rounded.sd == 0 and rounded.p == pytest.approx(0.25)
    exact = paired_t({s: 1.0 for s in range(3)}, {s: 0.5 for s in range(3)})
    assert exact.sd == 0 and exact.p == pytest.approx(0.25)
    assert paired_t({s: 1.0 for s in range(10)}, {s: 0.5 for s in range(10)}).p == pytest.approx(2 / 1024)
    assert paired_t({s: 0.5 for s in range(3)}, {s: 0.5 for s in range(3)}).p == 1.0


def test_combined_interval_adds_the_image_variance_with_satterthwaite_degrees_of_freedom():
    d = [0.01, 0.03, 0.05]  # mean 0.03, variance 4e-4: seed part 4e-4 / 3
    seeds = 4e-4 / 3
    low, high, df = combined_interval(d, image_variance=seeds, image_df=200)
    # by hand: total 2 x seeds; df = (2 s)^2 / (s^2 / 2 + s^2 / 200) = 4 / (0.5 + 0.005) = 7.92
    assert df == pytest.approx(4 / 0.505)
    half = stats.t.ppf(0.975, 4 / 0.505) * np.sqrt(2 * seeds)
    assert (low, high) == pytest.approx((0.03 - half, 0.03 + half))
    only_seeds = combined_interval(d, 0.0, 200)  # no image noise: the paired t-interval itself
    assert only_seeds[:2] == pytest.approx(stats.ttest_1samp(d, 0).confidence_interval(0.95))
    assert only_seeds[2] == pytest.approx(2)
    assert np.isnan(combined_interval([0.1], 1e-4, 200)[0])
    assert pooled_sd([0.02, 0.04], [3, 3]) == pytest.approx(np.sqrt((0.02 ** 2 + 0.04 ** 2) / 2))
    assert pooled_sd([0.02, 0.04], [3, 1]) == pytest.approx(0.02)  # one seed has no sd to pool


def test_stratified_image_weights_keep_each_class_count_in_every_replicate():
    strata = np.array([0, 0, 0, 1, 2, 2, -1, -1])
    weights = image_weights(8, 500, seed=3, strata=strata)
    for value in (0, 1, 2, -1):
        assert (weights[:, strata == value].sum(axis=1) == (strata == value).sum()).all()
    assert weights[:, 3].min() == 1  # a class of one image is always drawn once
    assert weights[:, 0].std() > 0  # the others are resampled
    plain = image_weights(8, 500, seed=3)
    assert (plain.sum(axis=1) == 8).all() and plain[:, 3].std() > 0
    with pytest.raises(CeladonError, match="one class per test image"):
        image_weights(8, 5, strata=[0, 1])


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


def test_the_test_images_bound_what_seeds_can_detect_and_images_needed_is_the_smallest_test_set():
    """The verdict needs the interval over seeds and test images to exclude zero: the images' variance does not
    shrink with seeds, so it raises the detectable effect and can put an effect out of reach of any seeds."""
    sd, n, images = 0.027, 10, 273
    assert detectable_effect(sd, n, image_variance=0.0) == detectable_effect(sd, n)  # seeds only, as before
    seeds_only = detectable_effect(sd, n)
    with_images = detectable_effect(sd, n, image_variance=0.009 ** 2, image_df=images - 1)
    assert with_images > seeds_only + 0.005
    # at the detectable effect the interval over seeds and images has the power asked for, by hand
    seed_var, image_var = sd ** 2 / n, 0.009 ** 2
    df = (seed_var + image_var) ** 2 / (seed_var ** 2 / (n - 1) + image_var ** 2 / (images - 1))
    critical = stats.t.ppf(0.975, df)
    noncentrality = with_images / np.sqrt(seed_var + image_var)
    assert stats.nct.sf(critical, df, noncentrality) + stats.nct.cdf(-critical, df, noncentrality) == \
        pytest.approx(0.8, abs=1e-6)
    # the images' share alone (image sd 0.009 needs an effect of at least ~2.8 x 0.009) puts 0.02 out of reach
    assert seeds_needed(0.02, sd) == 17 and seeds_needed(0.02, sd, image_variance=0.009 ** 2, image_df=272) is None
    assert seeds_needed(0.04, sd, image_variance=0.009 ** 2, image_df=272) > seeds_needed(0.04, sd)
    # a larger test set brings it back: the smallest count at which these seeds reach the power
    need = images_needed(0.02, sd, 25, 0.009 ** 2, images)
    assert need is not None and need > images
    at = lambda count: detectable_effect(sd, 25, image_variance=0.009 ** 2 * images / count,  # noqa: E731
                                         image_df=count - 1)
    assert at(need) <= 0.02 < at(need - 1)
    assert images_needed(0.02, sd, 10, 0.009 ** 2, images) is None  # 10 seeds alone are too noisy for 0.02
    assert images_needed(0.02, sd, 1, 0.009 ** 2, images) is None
    assert images_needed(0.02, 0.0, 10, 0.009 ** 2, images) is None  # every difference equal: no sd to scale


def test_the_power_formula_predicts_the_simulated_verdict_rule_where_the_seeds_only_one_overstated_it():
    """`celadon bench stats`'s simulation applies the verdict rule itself: the power predicted from the variances
    a study sees (seeds and test images) matches its rejection rate; the seeds-only power, which the report
    gave before, matches the t-test alone and overstates the verdict's."""
    from celadon.evaluate.simulate import simulate

    result = simulate(25, images=271, reps=200, delta=0.15, seed=7)
    assert abs(result["predicted_verdict_power"] - result["verdict_rejection_rate"]) < 0.06
    assert abs(result["predicted_seeds_only_power"] - result["t_rejection_rate"]) < 0.06
    assert result["predicted_seeds_only_power"] > result["verdict_rejection_rate"] + 0.1


def test_a_simulation_at_our_seed_counts_holds_the_level_where_pooled_mcnemar_did_not():
    """Seeds share one test set: McNemar pooled over seeds treats 3 x 271 readings as independent and rejects
    far above 5% under no effect; the verdict rule holds the level, and the interval over seeds and test
    images covers the population difference at least as often as nominal."""
    from celadon.evaluate.simulate import simulate

    for seeds in (3, 10):
        null = simulate(seeds, images=271, reps=150, seed=seeds)
        assert null["pooled_mcnemar_rejection_rate"] > 0.10
        assert null["verdict_rejection_rate"] <= 0.05 + 2 * null["monte_carlo_se"]
        assert null["combined_coverage"] >= 0.95 - 2 * null["monte_carlo_se"]
    effect = simulate(10, images=271, reps=150, delta=0.2, seed=4)
    assert effect["population_difference"] > 0.02 and effect["combined_coverage"] >= effect["t_coverage"]


def test_share_of_the_oracles_gain_has_fiellers_interval_only_where_the_oracle_gain_is_clear():
    from scipy import stats as sps

    from celadon.evaluate.stats import share_of_gain

    gain = {0: 0.02, 1: 0.05, 2: 0.03, 3: 0.06, 4: 0.01}
    oracle = {0: 0.10, 1: 0.12, 2: 0.08, 3: 0.11, 4: 0.09}
    share = share_of_gain(gain, oracle)
    assert share.share == pytest.approx(0.034 / 0.10) and share.n == 5
    # Fieller's bounds are the shares r at which the t statistic of gain - r x oracle gain is exactly critical
    crit = sps.t.ppf(0.975, 4)
    for r in (share.low, share.high):
        d = np.array([gain[s] - r * oracle[s] for s in gain])
        assert abs(d.mean() / (d.std(ddof=1) / np.sqrt(5))) == pytest.approx(crit, rel=1e-9)
    assert share.low < share.share < share.high
    # an oracle whose gain is not clear at the level: no share is defined
    unclear = share_of_gain(gain, {0: 0.10, 1: -0.08, 2: 0.05, 3: -0.02, 4: 0.01})
    assert (unclear.share, unclear.low, unclear.high) == (None, None, None)


def test_every_arm_is_read_against_the_oracle_and_replay_of_its_own_plan_and_ratio():
    from types import SimpleNamespace

    from celadon.experiment.comparisons import against_controls
    from celadon.experiment.config import Arm

    arms = [Arm(name="baseline"), Arm(name="img2img", plan="B", ratio=0.1, generator="img2img"),
            Arm(name="oracle", plan="B", ratio=0.1, generator="oracle"),
            Arm(name="replay", plan="B", ratio=0.1, generator="replay"),
            Arm(name="A txt2img", plan="A", ratio=0.05, generator="lora")]
    synthesis = SimpleNamespace(generate={}, generators={"img2img": {"generator": "img2img"}, "lora": {},
                                                         "oracle": {"generator": "oracle"},
                                                         "replay": {"generator": "replay"}})
    runs = SimpleNamespace(config=SimpleNamespace(arms=arms, baseline="baseline", synthesis=synthesis))
    per_arm = {"baseline": [0.60, 0.62, 0.61], "img2img": [0.64, 0.65, 0.66], "oracle": [0.70, 0.71, 0.72],
               "replay": [0.63, 0.63, 0.64], "A txt2img": [0.61, 0.61, 0.62]}
    tables = {"t": [{"measure": "all/mean_f1_macro", "arm": a, "values": {str(s): v for s, v in enumerate(vs)}}
                    for a, vs in per_arm.items()]}
    rows = against_controls(runs, tables, "all/mean_f1_macro")
    assert set(rows) == {"img2img", "oracle", "replay", "A txt2img"}
    img2img = rows["img2img"]
    assert img2img["oracle"] == "oracle" and img2img["replay"] == "replay"
    assert img2img["gain"] == pytest.approx(0.04) and img2img["oracle_gain"] == pytest.approx(0.10)
    assert img2img["share"] == pytest.approx(0.4) and img2img["share_low"] < 0.4 < img2img["share_high"]
    assert img2img["vs_replay"] == pytest.approx(0.05 / 3 + 0.0)  # (0.01 + 0.02 + 0.02) / 3
    # the oracle against replay: what new images could add over the same photos shown again
    assert "oracle" not in rows["oracle"] and rows["oracle"]["vs_replay"] == pytest.approx(0.23 / 3)
    assert rows["replay"]["share"] == pytest.approx((0.07 / 3) / 0.10)  # showing the photos again: 23 %
    assert "oracle" not in rows["A txt2img"] and "replay" not in rows["A txt2img"]  # no control of plan A at 5 %

    from celadon.report.html import _controls_section

    unclear = {"generator": "img2img", "gain": 0.01, "oracle": "oracle", "oracle_gain": 0.02, "share": None,
               "share_low": None, "share_high": None, "share_defined": False}
    page = _controls_section({"controls": rows | {"unclear arm": unclear}})
    assert "40% [" in page and "undefined: the oracle's gain is not clear" in page
    assert "+0.017 [" in page  # img2img minus replay
    assert _controls_section({"controls": {"A txt2img": rows["A txt2img"]}}) == ""  # no control to read it by

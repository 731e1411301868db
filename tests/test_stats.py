"""Multi-seed statistics against cases whose answer is known exactly."""

import itertools

import numpy as np
import pytest

from celadon.errors import CeladonError
from celadon.evaluate.stats import bootstrap_ci, paired_difference


def test_bootstrap_matches_the_exact_resampling_distribution():
    values = [0.60, 0.70, 0.95]
    # All 27 equally likely resamples of 3 values: the exact bootstrap distribution of the mean.
    exact = np.array([np.mean(c) for c in itertools.product(values, repeat=3)])
    interval = bootstrap_ci(values, resamples=200_000)
    assert interval.mean == pytest.approx(0.75)
    assert interval.low == pytest.approx(np.quantile(exact, 0.025, method="inverted_cdf"), abs=0.01)
    assert interval.high == pytest.approx(np.quantile(exact, 0.975, method="inverted_cdf"), abs=0.01)
    assert bootstrap_ci([0.5, 0.5, 0.5]).low == bootstrap_ci([0.5, 0.5, 0.5]).high == 0.5


def test_paired_difference_removes_the_shared_seed_effect():
    baseline = {0: 0.40, 1: 0.60, 2: 0.80}  # large seed-to-seed spread...
    arm = {0: 0.42, 1: 0.62, 2: 0.82, 3: 0.99}  # ...but always 0.02 better; seed 3 has no partner
    difference = paired_difference(arm, baseline)
    assert difference.n == 3 and difference.mean == pytest.approx(0.02)
    assert difference.low == pytest.approx(0.02) and difference.excludes_zero()
    unpaired = bootstrap_ci(list(arm.values())[:3])
    assert unpaired.high - unpaired.low > 0.2  # the spread the pairing removed
    with pytest.raises(CeladonError, match="same seeds"):
        paired_difference({5: 1.0}, baseline)

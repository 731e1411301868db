"""Multi-seed statistics: mean with a 95% percentile-bootstrap interval, and the paired difference of two
arms trained with the same seeds (pairing removes the seed-to-seed variance both arms share)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

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


def bootstrap_ci(values: Sequence[float], level: float = 0.95, resamples: int = 20_000, seed: int = 0) -> Interval:
    """Mean of `values` and the percentile-bootstrap interval of that mean."""
    data = np.asarray(values, dtype=float)
    if data.size == 0 or not np.isfinite(data).all():
        raise CeladonError(f"bootstrap needs finite values, got {list(values)}")
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, (resamples, data.size))].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return Interval(float(data.mean()), float(low), float(high), int(data.size))


def paired_difference(arm: Mapping[int, float], baseline: Mapping[int, float], level: float = 0.95,
                      resamples: int = 20_000, seed: int = 0) -> Interval:
    """CI of mean(arm - baseline) over the seeds both have run."""
    shared = sorted(set(arm) & set(baseline))
    if not shared:
        raise CeladonError("no seed was run in both arms; a paired difference needs the same seeds")
    return bootstrap_ci([arm[s] - baseline[s] for s in shared], level, resamples, seed)

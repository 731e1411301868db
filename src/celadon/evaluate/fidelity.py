"""Label fidelity of synthetic images relative to the judge on real photos of the same combinations.

A plan puts most of its items on the rarest combinations (1/√n), while real validation photos are mostly of
the commoner ones, where the judge also reads labels better. Pooling the real photos would compare the
synthetic set with an easier mix and understate it. Direct standardisation compares like with like: each
combination's real-photo agreement is weighted by the number of synthetic items of that combination, over
the combinations that have both. The interval is a two-sample bootstrap (items and photos resampled
independently) from scipy.stats, BCa where it is defined.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats


@dataclass(frozen=True)
class RelativeFidelity:
    synthetic: float | None  # judge agreement on the synthetic items whose combination has real photos
    real: float | None  # judge agreement on real photos, each combination weighted by its synthetic items
    relative: float | None  # synthetic / real (1.0: as convincing to the judge as real photos)
    interval: tuple[float, float] | None
    items: int  # synthetic items compared
    photos: int  # real photos of their combinations


def agreement(frame: pd.DataFrame, tasks: Sequence[str]) -> pd.Series:
    """Per row, whether the judge (`pred_<task>` columns) agrees on every task; NaN where a label is missing
    or the image was not judged."""
    labels = frame[list(tasks)].astype(object)
    predicted = frame[[f"pred_{t}" for t in tasks]].astype(object).to_numpy()
    known = (labels.notna() & (labels != "")).all(axis=1).to_numpy()
    judged = ~pd.isna(predicted).any(axis=1) & (predicted != "").all(axis=1)
    agree = (labels.to_numpy() == predicted).all(axis=1).astype(float)
    return pd.Series(np.where(known & judged, agree, np.nan), index=frame.index)


def _codes(synthetic: pd.DataFrame, real: pd.DataFrame, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray, int]:
    combos = pd.concat([synthetic[list(keys)], real[list(keys)]]).astype(str).agg("\x1f".join, axis=1)
    codes, uniques = pd.factorize(combos)
    return codes[:len(synthetic)], codes[len(synthetic):], len(uniques)


def _standardised(item_codes, item_correct, photo_codes, photo_correct, k: int) -> tuple[float, float, int]:
    """(synthetic agreement on covered items, weighted real agreement, covered items)."""
    photos = np.bincount(photo_codes, minlength=k)
    covered = photos > 0
    weights = np.bincount(item_codes, minlength=k) * covered
    if not weights.sum():
        return np.nan, np.nan, 0
    per_combo = np.bincount(photo_codes, weights=photo_correct, minlength=k) / np.maximum(photos, 1)
    on_covered = covered[item_codes]
    return (float(item_correct[on_covered].mean()), float((weights * per_combo).sum() / weights.sum()),
            int(on_covered.sum()))


def relative_fidelity(synthetic: pd.DataFrame, real: pd.DataFrame, keys: Sequence[str], tasks: Sequence[str],
                      confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> RelativeFidelity:
    """`synthetic` and `real` carry the combination `keys`, the labels and the judge's `pred_<task>`."""
    syn_ok, real_ok = agreement(synthetic, tasks), agreement(real, tasks)
    synthetic, real = synthetic[syn_ok.notna()], real[real_ok.notna()]
    y, z = syn_ok.dropna().to_numpy(), real_ok.dropna().to_numpy()
    cy, cz, k = _codes(synthetic, real, keys)
    relevant = np.isin(cz, cy)  # photos of other combinations play no part, in the bootstrap either
    cz, z = cz[relevant], z[relevant]
    syn, ref, items = _standardised(cy, y, cz, z, k)
    photos = len(z)
    if not items:
        return RelativeFidelity(None, None, None, None, 0, 0)
    ratio = syn / ref if ref else None

    def statistic(i, j):
        s, r, _ = _standardised(cy[i], y[i], cz[j], z[j], k)
        return s / r if r else np.nan

    interval = None
    if ratio is not None and len(y) > 1 and len(z) > 1:
        with warnings.catch_warnings():  # BCa warns (and gives NaN) where the jackknife is degenerate
            warnings.simplefilter("ignore")
            result = stats.bootstrap((np.arange(len(y)), np.arange(len(z))), statistic, paired=False,
                                     vectorized=False, n_resamples=n_resamples, confidence_level=confidence,
                                     method="BCa", rng=np.random.default_rng(seed))
        low, high = result.confidence_interval
        if not (np.isfinite(low) and np.isfinite(high)):  # then the percentile interval, if nearly all
            values = result.bootstrap_distribution  # resamples define the ratio (a resample may lose a
            values = values[np.isfinite(values)]  # combination's every photo, or read none right)
            tail = (1 - confidence) / 2 * 100
            low, high = (np.percentile(values, [tail, 100 - tail]) if len(values) >= confidence * n_resamples
                         else (np.nan, np.nan))
        if np.isfinite(low) and np.isfinite(high):
            interval = (float(low), float(high))
    return RelativeFidelity(syn, ref, ratio, interval, items, photos)


def standardised_real(weights: pd.DataFrame, real: pd.DataFrame, keys: Sequence[str], tasks: Sequence[str]
                      ) -> float | None:
    """The judge's agreement on real photos weighted to the combination mix of `weights` (e.g. a plan)."""
    real_ok = agreement(real, tasks)
    real = real[real_ok.notna()]
    cy, cz, k = _codes(weights, real, keys)
    _, ref, items = _standardised(cy, np.zeros(len(cy)), cz, real_ok.dropna().to_numpy(), k)
    return ref if items else None

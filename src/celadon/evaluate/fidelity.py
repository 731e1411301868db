"""Label fidelity of synthetic images relative to the judge on real photos of the same combinations.

A plan puts most of its items on the rarest combinations (1/√n), while real validation photos are mostly of
the commoner ones, where the judge also reads labels better. Pooling the real photos would compare the
synthetic set with an easier mix and understate it. Direct standardisation compares like with like: each
combination's real-photo agreement is weighted by the number of synthetic items of that combination, over
the combinations that have both. The interval is a two-sample bootstrap from scipy.stats, BCa where it is
defined. Synthetic items are resampled in clusters, not one by one: items that share a source photo or a
combination (connected components: `item_clusters`) are not independent readings, and resampling them singly
would make the interval too narrow. Real photos are resampled one by one.
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
    clusters: int = 0  # resampling units of the items (their clusters; the items themselves without clusters)


def item_clusters(frame: pd.DataFrame, keys: Sequence[str], source: str = "source") -> np.ndarray:
    """A cluster id per item: items sharing a combination of `keys`, or a `source` photo (where the column has
    one), fall in one cluster, transitively (connected components of items, combinations and sources)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(frame)
    combos = pd.factorize(frame[list(keys)].astype(str).agg("\x1f".join, axis=1))[0] if n else np.zeros(0, int)
    rows, cols = list(range(n)), list(n + combos)
    if source in frame:
        photos = frame[source].where(frame[source].map(lambda v: isinstance(v, str) and bool(v)))
        codes = pd.factorize(photos)[0]  # -1: no source
        offset = n + (combos.max() + 1 if n else 0)
        rows += [i for i in range(n) if codes[i] >= 0]
        cols += [offset + codes[i] for i in range(n) if codes[i] >= 0]
    size = max(cols, default=0) + 1
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(max(size, n), max(size, n)))
    _, labels = connected_components(graph, directed=False)
    return pd.factorize(labels[:n])[0]


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
                      confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0,
                      clusters: np.ndarray | None = None) -> RelativeFidelity:
    """`synthetic` and `real` carry the combination `keys`, the labels and the judge's `pred_<task>`;
    `clusters` (one id per synthetic row, `item_clusters`) makes the bootstrap resample them, not items;
    `n_resamples=0` skips the interval."""
    syn_ok, real_ok = agreement(synthetic, tasks), agreement(real, tasks)
    clusters = np.arange(len(synthetic)) if clusters is None else np.asarray(clusters)
    clusters = pd.factorize(clusters[syn_ok.notna().to_numpy()])[0]
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
    members = [np.flatnonzero(clusters == c) for c in range(clusters.max() + 1)] if len(clusters) else []

    def statistic(c, j):
        i = np.concatenate([members[int(x)] for x in c])
        s, r, _ = _standardised(cy[i], y[i], cz[j], z[j], k)
        return s / r if r else np.nan

    interval = None
    if ratio is not None and n_resamples and len(members) > 1 and len(z) > 1:
        with warnings.catch_warnings():  # BCa warns (and gives NaN) where the jackknife is degenerate
            warnings.simplefilter("ignore")
            result = stats.bootstrap((np.arange(len(members)), np.arange(len(z))), statistic, paired=False,
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
    return RelativeFidelity(syn, ref, ratio, interval, items, photos, len(members))


def standardised_real(weights: pd.DataFrame, real: pd.DataFrame, keys: Sequence[str], tasks: Sequence[str]
                      ) -> float | None:
    """The judge's agreement on real photos weighted to the combination mix of `weights` (e.g. a plan)."""
    real_ok = agreement(real, tasks)
    real = real[real_ok.notna()]
    cy, cz, k = _codes(weights, real, keys)
    _, ref, items = _standardised(cy, np.zeros(len(cy)), cz, real_ok.dropna().to_numpy(), k)
    return ref if items else None

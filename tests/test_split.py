"""The adaptive split rules, property-style over random manifests."""

import math
from pathlib import Path

import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from celadon.data.manifest import Manifest
from celadon.data.split import SplitConfig, adaptive_split, split_sizes, split_summary
from celadon.taxonomy import load_taxonomy

TAXONOMY = load_taxonomy()
GLAZES = TAXONOMY.task("glaze").codes
TYPES = TAXONOMY.task("type").codes


def _manifest(sizes: list[int]) -> Manifest:
    rows = []
    for combo, n in enumerate(sizes):
        for i in range(n):
            rows.append({"path": f"c{combo}/{i}.jpg", "dynasty": "song", "kiln": "ru",
                         "glaze": GLAZES[combo % len(GLAZES)], "type": TYPES[combo // len(GLAZES)]})
    return Manifest(pd.DataFrame(rows).astype(object), root=Path("."), taxonomy=TAXONOMY)


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 60), min_size=1, max_size=12), seed=st.integers(0, 2**31))
def test_each_combination_follows_its_size_rule(sizes, seed):
    manifest = _manifest(sizes)
    splits = adaptive_split(manifest, SplitConfig(seed=seed))
    assert splits.notna().all() and set(splits) <= {"train", "val", "test"}
    for _, group in splits.groupby(manifest.combination_keys()):
        n = len(group)
        counts = {s: int((group == s).sum()) for s in ("train", "val", "test")}
        if n == 1:
            assert counts == {"train": 1, "val": 0, "test": 0}
        elif n == 2:
            assert counts == {"train": 0, "val": 1, "test": 1}
        elif n < 10:
            expected = max(1, math.floor(0.15 * n + 0.5))  # ~15%, at least one
            assert counts["val"] == expected and counts["test"] == expected
            assert counts["train"] == n - 2 * expected >= 1
        else:
            assert abs(counts["train"] - 0.7 * n) <= 0.5 and abs(counts["val"] - 0.2 * n) <= 0.5
            assert counts["test"] >= 1
    # Same seed, same split, whatever the row order.
    shuffled = manifest.with_frame(manifest.frame.sample(frac=1.0, random_state=seed % 1000))
    again = adaptive_split(shuffled, SplitConfig(seed=seed))
    assert dict(zip(shuffled.frame["path"], again, strict=True)) == dict(zip(manifest.frame["path"], splits,
                                                                            strict=True))


def test_known_sizes():
    config = SplitConfig()
    assert [split_sizes(n, config) for n in (1, 2, 3, 5, 9, 10, 20, 100)] == [
        (1, 0, 0), (0, 1, 1), (1, 1, 1), (3, 1, 1), (7, 1, 1), (7, 2, 1), (14, 4, 2), (70, 20, 10)]


def test_adding_a_combination_does_not_reshuffle_others():
    base = _manifest([30, 12])
    grown = _manifest([30, 12, 7])
    first = dict(zip(base.frame["path"], adaptive_split(base), strict=True))
    second = dict(zip(grown.frame["path"], adaptive_split(grown), strict=True))
    assert all(second[p] == s for p, s in first.items())


def test_different_seeds_differ_and_custom_key():
    manifest = _manifest([40, 40])
    assert not adaptive_split(manifest, SplitConfig(seed=1)).equals(adaptive_split(manifest, SplitConfig(seed=2)))
    by_kiln = adaptive_split(manifest, SplitConfig(key=("kiln",)))  # one combination of 80
    assert (by_kiln == "train").sum() == 56 and (by_kiln == "val").sum() == 16


def test_summary_counts_buckets():
    manifest = _manifest([1, 2, 5, 20])
    config = SplitConfig()
    table = split_summary(manifest.combination_keys(), adaptive_split(manifest, config), config)
    assert table.loc["singleton (n=1)"].tolist() == [1, 1, 0, 0]
    assert table.loc["doublet (n=2)"].tolist() == [1, 0, 1, 1]
    assert table.loc["total"].tolist() == [4, 1 + 3 + 14, 0 + 1 + 1 + 4, 0 + 1 + 1 + 2]

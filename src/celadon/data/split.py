"""The paper's adaptive split by label-combination frequency (§3.2.1, Fig. 5).

n = 1 -> train only; n = 2 -> one val, one test; 3 <= n < 10 -> ~70/15/15 with at least one image in val
and in test; n >= 10 -> 70/20/10. Each combination is shuffled by its own generator derived from the seed
and the combination key, so adding images of one combination never reshuffles another.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from celadon.data.check import ImageCheckConfig, originals, read_checked, require_no_errors
from celadon.data.duplicates import (
    DEFAULT_NEAR_DISTANCE,
    DuplicatePair,
    duplicate_groups,
    find_duplicates,
    find_leakage,
)
from celadon.data.manifest import Manifest, Problem, write_manifest
from celadon.data.validate import duplicate_problems
from celadon.errors import CeladonError
from celadon.runinfo import atomic_write_text, write_run_info
from celadon.taxonomy import Taxonomy

SPLITS = ("train", "val", "test")


@dataclass
class SplitConfig:
    manifest: str = ""  # the manifest to split (every row and image is checked first)
    out: str = ""  # where splits.csv, split_summary.csv and leakage.csv go
    taxonomy: str | None = None
    keep_split: str | None = None  # keep the split you already have in this column (train/val/test)
    seed: int = 0  # each combination is shuffled by a generator derived from it and the combination
    key: tuple[str, ...] | None = None  # tasks forming the combination; None = all tasks
    small_fractions: tuple[float, float, float] = (0.70, 0.15, 0.15)  # for 3 <= n < standard_min
    standard_fractions: tuple[float, float, float] = (0.70, 0.20, 0.10)  # for n >= standard_min
    standard_min: int = 10  # combinations of at least this many images split 70/20/10
    near_distance: int = DEFAULT_NEAR_DISTANCE  # pHash bits for near duplicates
    leakage_check: bool = True  # report copies that sit in different splits (leakage.csv)
    group_duplicates: bool = True  # a duplicate group stays in one split (off: duplicates split independently)
    root: str | None = None  # image paths must resolve inside this folder (default: the manifest's folder)
    allow_outside_root: bool = False  # accept image paths outside the root

    def key_settings(self) -> dict:
        """What decides the split, for a study's stage key: the settings above minus paths, and each added
        setting only where it differs from its default (so keys of earlier studies hold)."""
        values = {k: v for k, v in asdict(self).items() if k not in ("manifest", "out", "taxonomy")}
        defaults = asdict(SplitConfig())
        for name in ("keep_split", "near_distance", "leakage_check", "group_duplicates", "root",
                     "allow_outside_root"):
            if values[name] == defaults[name]:
                values.pop(name)
        return values


def _round(x: float) -> int:
    return int(math.floor(x + 0.5))  # half up, not banker's rounding: sizes must not depend on parity


def split_sizes(n: int, config: SplitConfig) -> tuple[int, int, int]:
    """(train, val, test) counts for a combination with n images."""
    if n <= 0:
        return 0, 0, 0
    if n == 1:
        return 1, 0, 0
    if n == 2:
        return 0, 1, 1
    if n < config.standard_min:
        _, val_f, test_f = config.small_fractions
        n_val, n_test = max(1, _round(n * val_f)), max(1, _round(n * test_f))
        return n - n_val - n_test, n_val, n_test
    train_f, val_f, _ = config.standard_fractions
    n_train, n_val = _round(n * train_f), _round(n * val_f)
    return n_train, n_val, n - n_train - n_val


def _combination_rng(seed: int, key: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def adaptive_split(manifest: Manifest, config: SplitConfig | None = None) -> pd.Series:
    """A `split` label per row of the manifest (index-aligned), deterministic for the seed."""
    config = config or SplitConfig()
    keys = manifest.combination_keys(config.key)
    # Order within a combination by image path, so the split does not depend on manifest row order.
    paths = manifest.frame["path"].astype(str)
    result = np.empty(len(manifest), dtype=object)
    for key, rows in keys.groupby(keys, sort=True).groups.items():
        rows = np.array(sorted(rows, key=lambda r: paths.iat[r]))
        order = _combination_rng(config.seed, str(key)).permutation(len(rows))
        n_train, n_val, _ = split_sizes(len(rows), config)
        labels = np.array(["train"] * n_train + ["val"] * n_val + ["test"] * (len(rows) - n_train - n_val))
        result[rows[order]] = labels
    return pd.Series(result, index=manifest.frame.index, name="split")


def split_summary(keys: pd.Series, splits: pd.Series, config: SplitConfig | None = None) -> pd.DataFrame:
    """Per combination-size bucket: combinations and images per split (the paper's Fig. 5 numbers)."""
    config = config or SplitConfig()
    sizes = keys.map(keys.value_counts())
    bucket = pd.cut(sizes, [0, 1, 2, config.standard_min - 1, np.inf],
                    labels=["singleton (n=1)", "doublet (n=2)", f"small (3-{config.standard_min - 1})",
                            f"standard (>={config.standard_min})"])
    frame = pd.DataFrame({"bucket": bucket, "key": keys, "split": splits})
    table = frame.pivot_table(index="bucket", columns="split", values="key", aggfunc="size", fill_value=0,
                              observed=False)
    table = table.reindex(columns=list(SPLITS), fill_value=0)
    table.insert(0, "combinations", frame.groupby("bucket", observed=False)["key"].nunique())
    table.loc["total"] = table.sum()
    return table.astype(int)


@dataclass
class SplitResult:
    path: Path
    summary: pd.DataFrame
    leakage: list[DuplicatePair]
    leakage_lines: list[str]
    duplicate_pairs: int = 0


def grouped_split(manifest: Manifest, config: SplitConfig, groups: np.ndarray) -> pd.Series:
    """Split one representative per duplicate group; the other copies follow it into the same split,
    so a re-exported copy of a training photo can never land in test."""
    representatives = np.flatnonzero(groups == np.arange(len(groups)))
    chosen = adaptive_split(manifest.subset(np.isin(np.arange(len(manifest)), representatives)), config)
    by_group = dict(zip(representatives.tolist(), chosen.tolist(), strict=True))
    return pd.Series([by_group[g] for g in groups.tolist()], index=manifest.frame.index, name="split")


SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "dev": "val", "test": "test"}


def kept_split(manifest: Manifest, column: str) -> pd.Series:
    """The user's own split from `column` (train/val/test; 'valid', 'validation', 'dev' read as val);
    every row without a usable value is an error."""
    if column not in manifest.frame:
        raise CeladonError(f"{manifest.source}: --keep-split {column!r}: no such column; columns are "
                           f"{', '.join(map(str, manifest.frame.columns))}")
    values = [SPLIT_NAMES.get(str(v).strip().lower()) if v is not None else None for v in manifest.frame[column]]
    problems = [Problem(manifest.source, manifest.row_name(i), column, "bad_split",
                        f"split {manifest.frame[column].iat[i]!r} is not train, val or test",
                        manifest.frame["path"].iat[i]) for i, v in enumerate(values) if v is None]
    require_no_errors(problems, manifest.source)
    return pd.Series(values, index=manifest.frame.index, name="split")


def run_split(manifest_path: str | Path, taxonomy: Taxonomy, out_dir: str | Path, config: SplitConfig,
              progress: bool = True, check: ImageCheckConfig | None = None) -> SplitResult:
    """Check every image (errors stop the split, all listed), split (duplicate groups kept together unless
    `group_duplicates` is off; or keep the user's split from column `keep_split`), write `splits.csv` +
    `split_summary.csv`, and report any duplicates that still cross splits."""
    near_distance, keep_split = config.near_distance, config.keep_split
    check = check or ImageCheckConfig(root=config.root, allow_outside_root=config.allow_outside_root)
    out_dir = Path(out_dir)
    manifest, infos, problems = read_checked(manifest_path, taxonomy, check, progress)
    pairs = find_duplicates(originals(manifest, infos), near_distance)
    problems += [p for p in duplicate_problems(manifest, infos, pairs)[0] if p.severity == "error"]
    require_no_errors(problems, str(manifest_path))
    if keep_split:
        splits = kept_split(manifest, keep_split)
    elif config.group_duplicates and pairs:
        splits = grouped_split(manifest, config, duplicate_groups(len(manifest), pairs))
    else:
        splits = adaptive_split(manifest, config)
    frame = manifest.frame.drop(columns=["split"], errors="ignore").assign(split=splits)
    path = write_manifest(manifest.with_frame(frame), out_dir / "splits.csv")
    summary = split_summary(manifest.combination_keys(config.key), splits, config)
    atomic_write_text(out_dir / "split_summary.csv", summary.to_csv())
    leaks, lines = [], []
    if config.leakage_check:
        leaks = find_leakage(pairs, list(splits))
        paths = list(manifest.frame["path"])
        lines = [
            f"leakage: {paths[p.first]!r} ({splits.iat[p.first]}) and {paths[p.second]!r} ({splits.iat[p.second]}) "
            f"are {'identical' if p.exact else f'near-identical (pHash distance {p.distance})'}"
            for p in leaks
        ]
        atomic_write_text(out_dir / "leakage.csv", pd.DataFrame(
            [{"first": paths[p.first], "first_split": splits.iat[p.first], "second": paths[p.second],
              "second_split": splits.iat[p.second], "exact": p.exact, "distance": p.distance} for p in leaks],
            columns=["first", "first_split", "second", "second_split", "exact", "distance"],
        ).to_csv(index=False))
    write_run_info(out_dir, "data split", asdict(config) | {"manifest": str(manifest_path), "out": str(out_dir)},
                   config.seed)
    return SplitResult(path, summary, leaks, lines, len(pairs))

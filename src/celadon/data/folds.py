"""Cross-fitting folds of a collection's training photos: judges that never saw the photo a generator started from.

A study of the user's own photos has no second collection to train an independent judge on. Instead K judges
each train without one fold of the training originals, and an img2img item is read by the judge whose
training left out its source photo's fold. Copies (identical or near-identical photos, and every offline
augmentation of an original) stay in one fold, so no judge saw a near copy of a source it reads. Combinations
are stratified: each combination's photos are dealt round the folds in a seeded order, the deal running on
from one combination to the next, so every fold holds about 1/K of every combination and of the singletons.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from celadon.data.check import scan_paths
from celadon.data.duplicates import DEFAULT_NEAR_DISTANCE, duplicate_groups, find_duplicates
from celadon.data.images import ImageInfo
from celadon.data.manifest import PATH_COLUMN, SOURCE_COLUMN, Manifest, resolve_image_path, write_manifest
from celadon.errors import CeladonError

FOLD_COLUMN = "fold"


def original_files(manifest: Manifest) -> list[str]:
    """Per row, the resolved path of the photo it is (an augmented copy: the original it was made from)."""
    sources = manifest.frame.get(SOURCE_COLUMN)
    files = []
    for i, path in enumerate(manifest.frame[PATH_COLUMN]):
        source = sources.iat[i] if sources is not None else None
        own = source if isinstance(source, str) and source else path
        files.append(str(resolve_image_path(manifest.root, own).resolve()))
    return files


def assign_folds(manifest: Manifest, k: int, seed: int = 0, near_distance: int = DEFAULT_NEAR_DISTANCE,
                 progress: bool = False) -> pd.Series:
    """The fold (0..k-1) of every training row, -1 for the other splits."""
    if k < 2:
        raise CeladonError(f"synthesis.judge_folds: {k}: cross-fitting needs at least 2 folds")
    train = (manifest.frame["split"] == "train").to_numpy() if "split" in manifest.frame else \
        np.ones(len(manifest), dtype=bool)
    files = original_files(manifest)
    combos = manifest.combination_keys([t for t in manifest.taxonomy.combination if t in manifest.tasks]
                                       or None).astype(str).tolist()
    unique = sorted({files[i] for i in np.flatnonzero(train)})
    if len(unique) < k:
        raise CeladonError(f"{manifest.source}: {len(unique)} training photos cannot fill {k} folds; "
                           "lower synthesis.judge_folds")
    combination = {}
    for i in np.flatnonzero(train):
        combination.setdefault(files[i], combos[i])
    infos = [info if isinstance(info, ImageInfo) else None
             for info in scan_paths([Path(f) for f in unique], progress=progress)]
    groups = duplicate_groups(len(unique), find_duplicates(infos, near_distance))
    representatives = sorted(set(groups.tolist()))
    by_combination: dict[str, list[int]] = {}
    for g in representatives:
        by_combination.setdefault(combination[unique[g]], []).append(g)
    fold_of_group, dealt = {}, 0
    for combo in sorted(by_combination):
        members = by_combination[combo]
        digest = hashlib.sha256(f"{seed}:{combo}".encode()).digest()
        order = np.random.default_rng(int.from_bytes(digest[:8], "little")).permutation(len(members))
        for position in order:
            fold_of_group[members[position]] = dealt % k
            dealt += 1
    fold_of_file = {unique[i]: fold_of_group[int(g)] for i, g in enumerate(groups)}
    return pd.Series([fold_of_file[files[i]] if train[i] else -1 for i in range(len(manifest))],
                     index=manifest.frame.index, name=FOLD_COLUMN)


def write_fold_tables(manifest: Manifest, out: str | Path, k: int, seed: int = 0,
                      near_distance: int = DEFAULT_NEAR_DISTANCE, progress: bool = False) -> dict:
    """`folds.csv` (each training photo's resolved path and fold) and `without_fold_<i>.csv`: the training
    table without fold i's rows, which judge i trains on (validation and test rows unchanged)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    folds = assign_folds(manifest, k, seed, near_distance, progress)
    files = original_files(manifest)
    train = folds.to_numpy() >= 0
    table = pd.DataFrame({"file": [files[i] for i in np.flatnonzero(train)],
                          FOLD_COLUMN: folds.to_numpy()[train]}).drop_duplicates("file")
    table.to_csv(out / "folds.csv", index=False)
    tables = []
    for fold in range(k):
        path = out / f"without_fold_{fold}.csv"
        write_manifest(manifest.subset(folds.to_numpy() != fold), path)
        tables.append(str(path))
    sizes = table[FOLD_COLUMN].value_counts().reindex(range(k), fill_value=0).tolist()
    return {"folds": str(out / "folds.csv"), "tables": tables, "photos_per_fold": sizes}


def read_folds(path: str | Path) -> dict[str, int]:
    """folds.csv as {resolved photo path: fold}."""
    table = pd.read_csv(path, dtype={"file": str, FOLD_COLUMN: int})
    return dict(zip(table["file"], table[FOLD_COLUMN], strict=True))

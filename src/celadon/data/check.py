"""The one image check every command that reads images runs (validate, split, analyze, train, QC).

Each row's file is decoded once under the pixel limit (images.py), sized and hashed; a folder, a special
file, a symlink loop, a bomb or a corrupt file becomes a row `Problem`, never a traceback. Paths of a
user's manifest must resolve inside its folder (or `--root`). Results are cached by (path, size,
modification time, pixel limit) in the cache folder, so a second command over the same collection does not
decode it again. `DataProblems` carries every bad row to the CLI, which prints them all and exits 1.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from celadon.data.duplicates import DEFAULT_NEAR_DISTANCE, find_duplicates, find_leakage
from celadon.data.images import ImageInfo, ImageReadError, inspect_image, max_pixels
from celadon.data.manifest import (
    PATH_COLUMN,
    SOURCE_COLUMN,
    Manifest,
    Problem,
    parse_manifest,
    refuse_missing,
    resolve_image_path,
)
from celadon.errors import DataProblems
from celadon.runinfo import default_cache_dir


@dataclass
class ImageCheckConfig:
    min_size: int = 32  # shorter side in pixels; smaller images carry no usable detail
    root: str | None = None  # image paths must resolve inside this folder; None: the manifest's folder
    allow_outside_root: bool = False
    enforce_root: bool = True  # off for manifests celadon wrote itself (their paths were checked on entry)
    workers: int = 2


class _InfoCache:
    """(resolved path, size, mtime, pixel limit) -> ImageInfo or the error it gave, in SQLite."""

    def __init__(self, folder: Path):
        self.db: sqlite3.Connection | None = None
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(folder / "image_checks.sqlite", timeout=30)
            self.db.execute("CREATE TABLE IF NOT EXISTS checks (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        except (OSError, sqlite3.Error):
            self.db = None  # an unwritable or damaged cache only costs time: every image is decoded

    @staticmethod
    def key(path: Path) -> str | None:
        try:
            info = os.stat(path)
        except OSError:
            return None  # missing files and loops are cheap to find again
        return f"{path.resolve()}|{info.st_size}|{info.st_mtime_ns}|{max_pixels()}"

    def get(self, key: str | None, path: Path) -> ImageInfo | ImageReadError | None:
        if self.db is None or key is None:
            return None
        try:
            row = self.db.execute("SELECT value FROM checks WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error:
            return None
        if row is None:
            return None
        value = json.loads(row[0])
        if "error" in value:
            return ImageReadError(path, value["error"], value["detail"])
        return ImageInfo(value["width"], value["height"], value["mode"], value["sha256"], int(value["phash"]),
                         bytes.fromhex(value["thumbnail"]))

    def put(self, entries: list[tuple[str, ImageInfo | ImageReadError]]) -> None:
        if self.db is None or not entries:
            return
        rows = []
        for key, result in entries:
            if isinstance(result, ImageReadError):
                value = {"error": result.kind, "detail": result.detail}
            else:
                value = {"width": result.width, "height": result.height, "mode": result.mode,
                         "sha256": result.sha256, "phash": str(result.phash), "thumbnail": result.thumbnail.hex()}
            rows.append((key, json.dumps(value)))
        try:
            with self.db:
                self.db.executemany("INSERT OR REPLACE INTO checks VALUES (?, ?)", rows)
        except sqlite3.Error:
            pass  # see __init__: the cache is an accelerator, never a source of truth


def scan_paths(paths: list[Path], workers: int = 2, progress: bool = True) -> list[ImageInfo | ImageReadError]:
    """Decode and hash each file once (threads: PIL releases the GIL), reusing cached results."""
    cache = _InfoCache(default_cache_dir())
    keys = [cache.key(p) for p in paths]
    results: list[ImageInfo | ImageReadError | None] = [cache.get(k, p) for k, p in zip(keys, paths, strict=True)]
    todo = [i for i, r in enumerate(results) if r is None]

    def one(index: int) -> ImageInfo | ImageReadError:
        try:
            return inspect_image(paths[index])
        except ImageReadError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        fresh = list(tqdm(pool.map(one, todo), total=len(todo), desc="reading images", disable=not progress or not todo,
                          leave=False))
    for index, result in zip(todo, fresh, strict=True):
        results[index] = result
    cache.put([(keys[i], r) for i, r in zip(todo, fresh, strict=True) if keys[i] is not None])
    return results  # type: ignore[return-value]


def _outside(manifest: Manifest, index: int, root: Path) -> Path | None:
    """Where a row's path really leads when that is outside `root` (after `..`, absolute paths, symlinks)."""
    try:
        target = manifest.image_path(index).resolve()
    except (OSError, RuntimeError):
        return None  # a symlink loop: the image check names it
    return None if target.is_relative_to(root) else target


def _missing_hint(manifest: Manifest, value: str) -> str:
    """What to do about a path that leads to no file: a URL, a Windows path, or a path relative to elsewhere."""
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", value):
        return "; URLs are not read: download the images and list their local paths"
    if "\\" in value:
        forward = value.replace("\\", "/")
        exists = resolve_image_path(manifest.root, forward).is_file()
        return (f"; it is written with backslashes (Windows): write it as {forward!r}"
                + (", which exists" if exists else f", relative to {manifest.root}"))
    return f"; paths are relative to {manifest.root}"


def check_images(manifest: Manifest, config: ImageCheckConfig | None = None, progress: bool = True
                 ) -> tuple[list[ImageInfo | None], list[Problem]]:
    """Per row, its ImageInfo (None when unusable) and every problem: outside the root, unreadable, tiny."""
    config = config or ImageCheckConfig()
    root = Path(config.root or manifest.root).resolve()
    source, values = manifest.source, list(manifest.frame[PATH_COLUMN])
    problems: list[Problem] = []
    infos: list[ImageInfo | None] = [None] * len(manifest)
    readable = []
    for index in range(len(manifest)):
        outside = _outside(manifest, index, root) if config.enforce_root and not config.allow_outside_root else None
        if outside is not None:
            problems.append(Problem(source, manifest.row_name(index), PATH_COLUMN, "outside_root",
                                    f"leads to {outside}, outside {root}; keep images inside the manifest's folder, "
                                    "pass --root FOLDER, or --allow-outside-root", values[index]))
        else:
            readable.append(index)
    scanned = scan_paths([manifest.image_path(i) for i in readable], config.workers, progress)
    for index, result in zip(readable, scanned, strict=True):
        where = manifest.row_name(index)
        if isinstance(result, ImageReadError):
            hint = _missing_hint(manifest, values[index]) if result.kind == "missing_file" else ""
            problems.append(Problem(source, where, PATH_COLUMN, result.kind, result.detail + hint, values[index]))
            continue
        infos[index] = result
        if min(result.width, result.height) < config.min_size:
            problems.append(Problem(source, where, PATH_COLUMN, "tiny_image",
                                    f"image is {result.width}x{result.height}, below the {config.min_size}px minimum "
                                    "(use a larger original or lower --min-size)", values[index]))
    return infos, problems


def read_checked(path: str | Path, taxonomy, config: ImageCheckConfig | None = None, progress: bool = True
                 ) -> tuple[Manifest, list[ImageInfo | None], list[Problem]]:
    """Parse a user's manifest and check its images in one pass, so label and image problems are reported
    together. Returns every problem (the caller adds its own, then calls `require_no_errors`)."""
    manifest, problems = parse_manifest(path, taxonomy)
    refuse_missing(problems)
    infos, image_problems = check_images(manifest, config, progress) if len(manifest) else ([], [])
    return manifest, infos, problems + image_problems


def require_no_errors(problems: list[Problem], what: str) -> None:
    """Raise `DataProblems` listing every error (warnings pass)."""
    if any(p.severity == "error" for p in problems):
        raise DataProblems(problems, what)


def originals(manifest: Manifest, infos: list[ImageInfo | None]) -> list[ImageInfo | None]:
    """Infos of rows that are their own photo: virtual augmentations re-use their source file on purpose and
    derived files (a `source` other than the row's own path) are copies by design; neither is a duplicate."""
    derived = manifest.augmentation_seeds() >= 0
    if SOURCE_COLUMN in manifest.frame:
        derived |= np.array([s is not None and os.path.normpath(s) != os.path.normpath(p) for s, p in
                             zip(manifest.frame[SOURCE_COLUMN], manifest.frame[PATH_COLUMN], strict=True)], dtype=bool)
    return [None if is_derived else info for info, is_derived in zip(infos, derived, strict=True)]


def leakage_problems(manifest: Manifest, infos: list[ImageInfo | None], near_distance: int = DEFAULT_NEAR_DISTANCE
                     ) -> list[Problem]:
    """One error per pair of copies (identical or near-identical) that sit in different splits."""
    splits, paths = list(manifest.frame["split"]), list(manifest.frame[PATH_COLUMN])
    problems = []
    for pair in find_leakage(find_duplicates(originals(manifest, infos), near_distance), splits):
        what = "identical" if pair.exact else f"near-identical (pHash distance {pair.distance})"
        problems.append(Problem(manifest.source, manifest.row_name(pair.second), "split", "leakage",
                                f"{what} to {paths[pair.first]!r} ({manifest.row_name(pair.first)}), but one is in "
                                f"{splits[pair.first]} and the other in {splits[pair.second]}", paths[pair.second]))
    return problems


def check_split_manifest(manifest: Manifest, allow_leakage: bool = False, near_distance: int = DEFAULT_NEAR_DISTANCE,
                         progress: bool = True) -> int:
    """Before training on a split (celadon's or the user's): every image usable, and no copy of one image in
    two splits unless `allow_leakage`. Returns the number of leaking pairs that were allowed."""
    infos, problems = check_images(manifest, ImageCheckConfig(enforce_root=False), progress)
    require_no_errors(problems, manifest.source)
    leaks = leakage_problems(manifest, infos, near_distance)
    if leaks and not allow_leakage:
        raise DataProblems(leaks, f"{manifest.source} ({len(leaks)} copies across splits would inflate every "
                           "metric)", "re-split with `celadon data split` (it keeps copies together), remove the "
                           "copies, or pass --allow-leakage to train anyway")
    return len(leaks)


KIND_TEXT = {
    "unknown_label": "rows have {task} labels the taxonomy does not know",
    "missing_file": "image files do not exist",
    "outside_root": "paths lead outside the manifest's folder",
    "unlabelled": "rows have no label at all",
    "conflicting_duplicate": "groups of copies carry different labels",
    "too_large": "images are over the pixel limit",
    "not_a_file": "paths are folders or special files, not images",
    "zero_size": "image files are empty",
    "symlink_loop": "paths are symbolic link loops",
    "corrupt": "files are not readable images",
    "truncated": "images are truncated",
    "unreadable": "files cannot be read (permissions)",
    "unsupported_mode": "images have an unsupported mode",
    "duplicate_row": "rows list an image that is already listed",
    "bad_row": "rows have the wrong number of fields",
    "leakage": "pairs of copies sit in different splits",
    "tiny_image": "images are below the minimum size",
}
KIND_HINT = {
    "unknown_label": "pass --taxonomy FILE with your own labels; see README \"Your own collection\"",
    "outside_root": "pass --root FOLDER or --allow-outside-root",
    "unlabelled": "label them, or pass --allow-unlabelled for prediction-only use",
    "too_large": "downscale them, or raise --max-pixels",
}


def summarise(problems: list[Problem], top: int = 5) -> list[str]:
    """One line per kind of error with counts (unknown labels per task, with their most common values)."""
    lines = []
    errors = [p for p in problems if p.severity == "error"]
    by_kind: dict[tuple[str, str], list[Problem]] = {}
    for problem in errors:
        task = problem.field if problem.kind == "unknown_label" else ""
        by_kind.setdefault((problem.kind, task), []).append(problem)
    for (kind, task), group in sorted(by_kind.items(), key=lambda kv: -len(kv[1])):
        text = KIND_TEXT.get(kind, f"× {kind.replace('_', ' ')}").format(task=task)
        detail = ""
        if kind == "unknown_label":
            values = Counter(p.message.split(" label ", 1)[1].split(";", 1)[0] for p in group)
            shown = ", ".join(f"{value} {count:,}" for value, count in values.most_common(top))
            detail = f": {shown}{', …' if len(values) > top else ''}"
        hint = f" — {KIND_HINT[kind]}" if kind in KIND_HINT else ""
        lines.append(f"{len(group):,} {text}{detail}{hint}")
    return lines

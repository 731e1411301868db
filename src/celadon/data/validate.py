"""`celadon data validate`: every problem of a manifest and its images, one line each, all at once."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from celadon.data.check import ImageCheckConfig, check_images, originals
from celadon.data.duplicates import DEFAULT_NEAR_DISTANCE, DuplicatePair, duplicate_groups, find_duplicates
from celadon.data.images import ImageInfo
from celadon.data.manifest import PATH_COLUMN, Manifest, Problem, parse_manifest
from celadon.taxonomy import Taxonomy


@dataclass
class ValidationConfig:
    min_size: int = 32  # shorter side in pixels; smaller images carry no usable detail
    near_distance: int = DEFAULT_NEAR_DISTANCE  # pHash bits; negative disables near-duplicate search
    encoding: str | None = None
    workers: int = 2
    root: str | None = None  # image paths must resolve inside it (default: the manifest's folder)
    allow_outside_root: bool = False
    allow_unlabelled: bool = False  # rows with no label at all (prediction-only manifests)


@dataclass
class ValidationReport:
    manifest: Manifest
    problems: list[Problem] = field(default_factory=list)
    infos: list[ImageInfo | None] = field(default_factory=list)
    duplicate_groups: int = 0
    duplicate_files: int = 0

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for problem in self.problems:
            counts[problem.kind] = counts.get(problem.kind, 0) + 1
        return counts


def duplicate_problems(manifest: Manifest, infos: list[ImageInfo | None], pairs: list[DuplicatePair]
                       ) -> tuple[list[Problem], int, int]:
    """One problem per group of copies (exact or near): an error when the copies carry different labels,
    naming every row, else a warning. Returns (problems, groups, files in groups)."""
    members: dict[int, list[int]] = defaultdict(list)
    for row, group in enumerate(duplicate_groups(len(manifest), pairs).tolist()):
        members[group].append(row)
    groups = [rows for rows in members.values() if len(rows) > 1]
    frame, paths, problems = manifest.frame, list(manifest.frame[PATH_COLUMN]), []
    for number, rows in enumerate(groups, start=1):
        identical = len({infos[r].sha256 for r in rows}) == 1
        what = "identical files" if identical else "copies (identical or near-identical images)"
        listed = ", ".join(f"{paths[r]!r} ({manifest.row_name(r)})" for r in rows)
        conflict = [t for t in manifest.tasks if len({frame[t].iat[r] for r in rows} - {None}) > 1]
        if conflict:
            labels = "; ".join(f"{manifest.row_name(r)}: " + ", ".join(f"{t}={frame[t].iat[r]}" for t in conflict)
                               for r in rows)
            problems.append(Problem(manifest.source, manifest.row_name(rows[0]), ",".join(conflict),
                                    "conflicting_duplicate",
                                    f"group {number}: {len(rows)} {what} carry different {', '.join(conflict)} "
                                    f"labels ({labels}): {listed}; fix the wrong labels or remove the wrong copies"))
        else:
            problems.append(Problem(manifest.source, manifest.row_name(rows[0]), PATH_COLUMN,
                                    "exact_duplicate" if identical else "near_duplicate",
                                    f"group {number}: {len(rows)} {what}: {listed}; keep one unless they are "
                                    "distinct objects", severity="warning"))
    return problems, len(groups), sum(len(rows) for rows in groups)


def validate_manifest(
    path: str | Path, taxonomy: Taxonomy, config: ValidationConfig | None = None, progress: bool = True
) -> ValidationReport:
    config = config or ValidationConfig()
    manifest, problems = parse_manifest(path, taxonomy, config.encoding, config.allow_unlabelled)
    if len(manifest) == 0:
        return ValidationReport(manifest, problems)
    check = ImageCheckConfig(config.min_size, config.root, config.allow_outside_root, workers=config.workers)
    infos, image_problems = check_images(manifest, check, progress)
    pairs = find_duplicates(originals(manifest, infos), config.near_distance)
    duplicates, groups, files = duplicate_problems(manifest, infos, pairs)
    return ValidationReport(manifest, problems + image_problems + duplicates, infos, groups, files)

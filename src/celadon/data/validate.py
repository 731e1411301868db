"""`celadon data validate`: every problem of a manifest and its images, one line each, all at once."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from celadon.data.duplicates import DEFAULT_NEAR_DISTANCE, find_duplicates, scan_images
from celadon.data.images import ImageInfo, ImageReadError
from celadon.data.manifest import PATH_COLUMN, Manifest, Problem, parse_manifest
from celadon.taxonomy import Taxonomy


@dataclass
class ValidationConfig:
    min_size: int = 32  # shorter side in pixels; smaller images carry no usable detail
    near_distance: int = DEFAULT_NEAR_DISTANCE  # pHash bits; negative disables near-duplicate search
    encoding: str | None = None
    workers: int = 2


@dataclass
class ValidationReport:
    manifest: Manifest
    problems: list[Problem] = field(default_factory=list)
    infos: list[ImageInfo | None] = field(default_factory=list)

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


def check_images(manifest: Manifest, config: ValidationConfig, progress: bool = True) -> ValidationReport:
    """Decode every image of a parsed manifest and report unreadable, tiny and duplicate images."""
    report = ValidationReport(manifest)
    source = manifest.source
    paths = list(manifest.frame[PATH_COLUMN])
    for index, result in enumerate(scan_images(manifest, config.workers, progress)):
        where, image = manifest.row_name(index), paths[index]
        if isinstance(result, ImageReadError):
            hint = {"missing_file": f"; paths are relative to {manifest.root}"}.get(result.kind, "")
            report.problems.append(Problem(source, where, PATH_COLUMN, result.kind, result.detail + hint, image))
            report.infos.append(None)
            continue
        report.infos.append(result)
        if min(result.width, result.height) < config.min_size:
            report.problems.append(Problem(
                source, where, PATH_COLUMN, "tiny_image",
                f"image is {result.width}x{result.height}, below the {config.min_size}px minimum "
                "(use a larger original or lower --min-size)", image,
            ))
    tasks = manifest.tasks
    # Virtual augmentations re-use their source file on purpose: they are not duplicates of it.
    derived = manifest.augmentation_seeds() >= 0
    originals = [None if is_derived else info for info, is_derived in zip(report.infos, derived, strict=True)]
    for pair in find_duplicates(originals, config.near_distance):
        first, second = manifest.frame.iloc[pair.first], manifest.frame.iloc[pair.second]
        conflict = [t for t in tasks if first[t] and second[t] and first[t] != second[t]]
        what = "identical content" if pair.exact else f"near-duplicate (pHash distance {pair.distance})"
        message = f"{what} of {paths[pair.first]!r} ({manifest.row_name(pair.first)})"
        if pair.exact and conflict:
            report.problems.append(Problem(source, manifest.row_name(pair.second), ",".join(conflict),
                                           "conflicting_duplicate",
                                           f"{message} but different {', '.join(conflict)} labels; fix one",
                                           paths[pair.second]))
        else:
            kind = "exact_duplicate" if pair.exact else "near_duplicate"
            report.problems.append(Problem(source, manifest.row_name(pair.second), PATH_COLUMN, kind,
                                           f"{message}; drop one unless they are distinct objects",
                                           paths[pair.second], severity="warning"))
    return report


def validate_manifest(
    path: str | Path, taxonomy: Taxonomy, config: ValidationConfig | None = None, progress: bool = True
) -> ValidationReport:
    config = config or ValidationConfig()
    manifest, problems = parse_manifest(path, taxonomy, config.encoding)
    if len(manifest) == 0:
        return ValidationReport(manifest, problems)
    report = check_images(manifest, config, progress)
    report.problems = problems + report.problems
    return report

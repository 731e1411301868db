"""Manifests: a CSV or Parquet table `path,<task>,<task>,...` with paths relative to the manifest.

Labels may be given as codes, English or Chinese names and are stored as codes; an empty cell means the
label is unknown (masked later). Parsing never stops at the first problem: it collects one `Problem` per
row and field so `celadon data validate` can report everything at once.
"""

from __future__ import annotations

import codecs
import csv
import difflib
import io
import os
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from celadon.errors import CeladonError, DataProblems
from celadon.taxonomy import Taxonomy

PATH_COLUMN = "path"
SOURCE_COLUMN = "source"  # for derived rows (augmented, synthetic): the image they came from
PATH_COLUMNS = (PATH_COLUMN, SOURCE_COLUMN)  # rebased when a manifest is written elsewhere
AUG_SEED_COLUMN = "aug_seed"  # set on rows whose image is an augmentation of `path`, rendered on the fly
TRAIN_TASKS_COLUMN = "train_tasks"  # synthetic rows: the tasks the image trains (comma-separated); others masked
JUDGE_CONFIDENCE = "judge_p_"  # + task: QC's judge's probability of a synthetic row's own label (synthetic_confidence)


def is_true(value) -> bool:
    """A table's boolean cell (`qc_pass`) as pandas, a person or a spreadsheet writes it."""
    return str(value).strip().lower() in ("true", "1", "yes")


def passed_qc(frame: pd.DataFrame) -> np.ndarray:
    """Per row, whether its `qc_pass` cell is true; every row passes in a table without that column."""
    if "qc_pass" not in frame:
        return np.ones(len(frame), dtype=bool)
    return np.array([is_true(v) for v in frame["qc_pass"]], dtype=bool)


@dataclass(frozen=True)
class Problem:
    """One finding about one row/field; `kind` is a stable problem class, `severity` error or warning."""

    source: str
    where: str  # "line 12", "row 3" or "" for file-level problems
    field: str
    kind: str
    message: str
    path: str = ""
    severity: str = "error"

    @property
    def detail(self) -> str:
        """The problem without its severity, for messages that carry their own ("error: " from the CLI)."""
        place = f"{self.source}:{self.where}" if self.where else self.source
        subject = f" {self.path!r}" if self.path else ""
        return f"{place}:{subject} [{self.field}] {self.message}"

    def __str__(self) -> str:
        return f"{self.severity}: {self.detail}"


@dataclass
class Manifest:
    """Rows of images with label codes (None = missing); `root` is where relative paths start."""

    frame: pd.DataFrame
    root: Path
    taxonomy: Taxonomy
    source: str = ""
    where: list[str] = field(default_factory=list)  # how messages name each row ("line 12"); parse order

    def row_name(self, index: int) -> str:
        return self.where[index] if index < len(self.where) else f"row {index + 1}"

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def tasks(self) -> list[str]:
        return self.taxonomy.task_names

    def image_path(self, index: int) -> Path:
        return resolve_image_path(self.root, self.frame[PATH_COLUMN].iat[index])

    def image_paths(self) -> list[Path]:
        return [resolve_image_path(self.root, p) for p in self.frame[PATH_COLUMN]]

    def augmentation_seeds(self) -> np.ndarray:
        """Per row, the seed of its virtual augmentation, or -1 for a row that is its image file as is."""
        if AUG_SEED_COLUMN not in self.frame:
            return np.full(len(self.frame), -1, dtype=np.int64)
        return np.array([-1 if s is None or pd.isna(s) else int(s) for s in self.frame[AUG_SEED_COLUMN]],
                        dtype=np.int64)

    def combination_keys(self, tasks: Iterable[str] | None = None) -> pd.Series:
        """One string per row joining the labels of `tasks` (default: all); missing labels read '?'."""
        tasks = list(tasks or self.tasks)
        parts = [self.frame[task].fillna("?").astype(str) for task in tasks]
        key = parts[0]
        for part in parts[1:]:
            key = key + "|" + part
        return key.rename("combination")

    def subset(self, mask) -> Manifest:
        return Manifest(self.frame[mask].reset_index(drop=True), self.root, self.taxonomy, self.source)

    def with_frame(self, frame: pd.DataFrame) -> Manifest:
        return Manifest(frame.reset_index(drop=True), self.root, self.taxonomy, self.source)


def resolve_image_path(root: Path, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else root / path


def decode_text(raw: bytes, source: str, encoding: str | None, problems: list[Problem]) -> str | None:
    if encoding:
        try:
            return raw.decode(encoding)
        except (UnicodeDecodeError, LookupError) as exc:
            problems.append(Problem(source, "", "file", "encoding", f"cannot decode as {encoding}: {exc}"))
            return None
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return raw.decode("utf-16")
    try:
        return raw.decode("utf-8-sig")  # a UTF-8 BOM (Excel's "CSV UTF-8") is accepted and stripped
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        problems.append(Problem(
            source, f"line {line}", "file", "encoding",
            f"byte 0x{raw[exc.start]:02x} is not UTF-8; re-save the manifest as UTF-8 "
            "(Excel on Chinese Windows writes GB18030: pass --encoding gb18030)",
        ))
        return None


def _read_table(path: Path, encoding: str | None, problems: list[Problem]) -> tuple[list[str], list[list[str]], str]:
    """Header and rows as strings; `unit` is how rows are named in messages ('line' for CSV, 'row' for Parquet)."""
    source = str(path)
    if path.suffix.lower() in (".parquet", ".pq"):
        try:
            table = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several unrelated types for bad files
            problems.append(Problem(source, "", "file", "unreadable", f"not a readable Parquet file ({exc})"))
            return [], [], "row"
        table = table.astype(object).where(table.notna(), "")
        return [str(c) for c in table.columns], [[str(v) for v in row] for row in table.itertuples(index=False)], "row"
    text = decode_text(path.read_bytes(), source, encoding, problems)
    if text is None:
        return [], [], "line"
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t") if text.strip() else csv.excel
    except csv.Error:
        dialect = csv.excel
    rows = list(csv.reader(io.StringIO(text), dialect))
    return (rows[0] if rows else []), rows[1:], "line"


def clean_cell(value: str) -> str:
    """Unicode NFKC (full-width 'Ｓｏｎｇ' -> 'Song') and runs of whitespace (non-breaking too) -> one space."""
    return " ".join(unicodedata.normalize("NFKC", value).split())


def _unknown_label(taxonomy: Taxonomy, task: str, value: str) -> str:
    """Why a label is refused: it belongs to another task (columns swapped), else the closest valid ones."""
    others = [other for other in taxonomy.task_names if other != task and _resolves(taxonomy, other, value)]
    if others:
        return (f"{value!r} is not a {task} label but a {' or '.join(others)} label; check that the columns are "
                "in the header's order")
    options = ", ".join(repr(s) for s in taxonomy.suggest(task, value))
    return f"unknown {task} label {value!r}; closest valid: {options}"


def _resolves(taxonomy: Taxonomy, task: str, value: str) -> bool:
    try:
        taxonomy.resolve(task, value)
    except KeyError:
        return False
    return True


def parse_manifest(
    path: str | Path, taxonomy: Taxonomy, encoding: str | None = None, allow_unlabelled: bool = False
) -> tuple[Manifest, list[Problem]]:
    """Parse and normalise a manifest, returning every row/field problem instead of stopping at the first.
    A row without any label is an error unless `allow_unlabelled` (manifests of images to predict)."""
    path = Path(path)
    source, problems = str(path), []
    empty = Manifest(pd.DataFrame(columns=[PATH_COLUMN, *taxonomy.task_names]), path.parent, taxonomy, source)
    if not path.is_file():
        return empty, [Problem(source, "", "file", "missing_manifest", "manifest file does not exist")]
    header, rows, unit = _read_table(path, encoding, problems)
    if problems:
        return empty, problems
    header = [h.strip() for h in header]
    repeated = sorted({h for h in header if header.count(h) > 1 and h})
    if repeated:  # which of the two cells would count is anyone's guess: refuse rather than keep one silently
        return empty, [Problem(source, "line 1" if unit == "line" else "", column, "bad_header",
                               f"column {column!r} appears {header.count(column)} times in the header (columns "
                               f"{', '.join(str(i + 1) for i, h in enumerate(header) if h == column)}); keep one")
                       for column in repeated]
    if not header and not rows:
        return empty, [Problem(source, "", "file", "empty_manifest", "manifest is empty; add a header line and rows")]
    if PATH_COLUMN not in header:
        looks_like_data = any(Path(h).suffix.lower() in (".jpg", ".jpeg", ".png", ".tif", ".webp") for h in header)
        hint = (
            "the first line looks like data: add a header, or import it with `celadon data import-csv`"
            if looks_like_data
            else f"expected columns {PATH_COLUMN},{','.join(taxonomy.task_names)}"
        )
        return empty, [Problem(source, "line 1" if unit == "line" else "", "header", "bad_header",
                               f"no '{PATH_COLUMN}' column in header {header}; {hint}")]
    for task in taxonomy.task_names:
        if task not in header:
            problems.append(Problem(source, "", task, "missing_column",
                                    f"no '{task}' column: every {task} label is treated as missing",
                                    severity="warning"))
    for column in header:
        if column not in taxonomy.task_names and column != PATH_COLUMN:
            # a misspelt or differently cased task ("Glaze", "glazes"), not a derived column ("pred_glaze")
            near = difflib.get_close_matches(column.strip().lower(), taxonomy.task_names, n=1, cutoff=0.8)
            if near:
                problems.append(Problem(source, "", column, "bad_header",
                                        f"column {column!r} is not a task; did you mean {near[0]!r}?"))
    if not rows:
        problems.append(Problem(source, "", "file", "empty_manifest", "manifest has a header but no rows"))
    records, seen = [], {}
    for i, row in enumerate(rows):
        where = f"{unit} {i + 2}" if unit == "line" else f"row {i + 1}"
        if unit == "line" and not any(cell.strip() for cell in row):
            continue  # blank lines are harmless
        if len(row) != len(header):
            problems.append(Problem(source, where, "row", "bad_row",
                                    f"has {len(row)} fields, header has {len(header)}; check quoting and delimiters"))
            continue
        cells = {h: clean_cell(cell) if h in taxonomy.task_names else cell.strip()
                 for h, cell in zip(header, row, strict=True)}
        image = cells[PATH_COLUMN]
        if not image:
            problems.append(Problem(source, where, PATH_COLUMN, "empty_path", "path is empty"))
            continue
        record = {PATH_COLUMN: image, "_where": where}
        for column, value in cells.items():
            if column == PATH_COLUMN:
                continue
            if column not in taxonomy.task_names:
                record[column] = value or None  # an empty cell is missing, in any column
                continue
            if not value:
                record[column] = None
                continue
            try:
                record[column] = taxonomy.resolve(column, value)
            except KeyError:
                problems.append(Problem(source, where, column, "unknown_label",
                                        _unknown_label(taxonomy, column, value), path=image))
                record[column] = None
        if not allow_unlabelled and not any(cells.get(t) for t in taxonomy.task_names):
            problems.append(Problem(source, where, ",".join(t for t in taxonomy.task_names if t in header) or "labels",
                                    "unlabelled", "row has no label at all; label it, drop it, or pass "
                                    "--allow-unlabelled for prediction-only use", path=image))
            continue
        # A row is identified by the image it yields: a virtual augmentation (same file, own seed) is not a repeat.
        key = (os.path.normpath(image), cells.get(AUG_SEED_COLUMN, ""))
        if key in seen:
            first = seen[key]
            same = all(first.get(t) == record.get(t) for t in taxonomy.task_names)
            what = "duplicate row" if same else "same image listed again with different labels"
            problems.append(Problem(source, where, PATH_COLUMN, "duplicate_row",
                                    f"{what} (first at {first['_where']}); keep one row per image", path=image))
            continue
        seen[key] = record
        records.append(record)
    frame = pd.DataFrame.from_records(records) if records else empty.frame.copy()
    for task in taxonomy.task_names:
        if task not in frame.columns:
            frame[task] = None
    frame = frame.astype(object).where(frame.notna(), None)
    where = list(frame["_where"]) if "_where" in frame else []
    return Manifest(frame.drop(columns="_where", errors="ignore"), path.parent, taxonomy, source, where), problems


def refuse_missing(problems: list[Problem]) -> None:
    """A manifest that does not exist is a usage error (one line, exit 2), not a data problem."""
    for problem in problems:
        if problem.kind == "missing_manifest":
            raise CeladonError(f"{problem.detail}; check the path")


def read_manifest(path: str | Path, taxonomy: Taxonomy, encoding: str | None = None,
                  allow_unlabelled: bool = False) -> Manifest:
    """Parse a manifest and refuse it, listing every error, if it has any (warnings are fine)."""
    manifest, problems = parse_manifest(path, taxonomy, encoding, allow_unlabelled)
    refuse_missing(problems)
    if any(p.severity == "error" for p in problems):
        raise DataProblems(problems, str(path))
    return manifest


def write_manifest(manifest: Manifest, path: str | Path) -> Path:
    """Write CSV/Parquet with image paths rebased so they stay relative to the new file's folder."""
    from celadon.runinfo import atomic_write_bytes

    path = Path(path).resolve()
    frame = manifest.frame.copy()
    for column in PATH_COLUMNS:
        if column in frame.columns:
            frame[column] = [
                None if p is None else os.path.relpath(resolve_image_path(manifest.root, p).resolve(), path.parent)
                for p in frame[column]
            ]
    buffer = io.BytesIO()
    if path.suffix.lower() in (".parquet", ".pq"):
        frame.to_parquet(buffer, index=False)
    else:
        buffer.write(frame.to_csv(index=False, lineterminator="\n").encode("utf-8"))
    atomic_write_bytes(path, buffer.getvalue())
    return path


def trained_labels(manifest: Manifest) -> pd.DataFrame:
    """The labels each row trains: a task left out of its `train_tasks` (a label QC could not verify) reads
    as missing, as the trainer masks it."""
    frame = manifest.frame[manifest.tasks].copy()
    if TRAIN_TASKS_COLUMN in manifest.frame:
        trains = [set(str(v).split(",")) if isinstance(v, str) else set() for v in manifest.frame[TRAIN_TASKS_COLUMN]]
        for task in manifest.tasks:
            frame[task] = [value if task in tasks else None for value, tasks in zip(frame[task], trains, strict=True)]
    return frame

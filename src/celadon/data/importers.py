"""Turning the layouts public datasets ship in into celadon manifests (labels of one task, others missing).

- folder per class: `root/<label>/*.jpg`
- a `filename,label` CSV, with or without header, whose labels may be class indices resolved through a
  class mapping file (one name per line, `index,name` lines, or a JSON/YAML index -> name mapping).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pandas as pd
import yaml

from celadon.data.images import IMAGE_EXTENSIONS
from celadon.data.manifest import PATH_COLUMN, Manifest, decode_text, write_manifest
from celadon.errors import CeladonError
from celadon.taxonomy import Taxonomy


def _resolve_all(taxonomy: Taxonomy, task: str, names: list[str], where: str) -> dict[str, str]:
    """Resolve label names to codes, failing once with every unknown name listed."""
    taxonomy.task(task)
    resolved, unknown = {}, []
    for name in names:
        try:
            resolved[name] = taxonomy.resolve(task, name)
        except KeyError:
            unknown.append(f"{name!r} (closest: {', '.join(taxonomy.suggest(task, name))})")
    if unknown:
        raise CeladonError(f"{where}: unknown {task} label(s) {'; '.join(unknown)}; rename them, or pass --taxonomy "
                           "FILE with your own labels (see README \"Your own collection\")")
    return resolved


def _frame(taxonomy: Taxonomy, task: str, paths: list[str], codes: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame({PATH_COLUMN: paths})
    for name in taxonomy.task_names:
        frame[name] = codes if name == task else [None] * len(paths)
    return frame.astype(object)


def import_folder(root: str | Path, task: str, taxonomy: Taxonomy, out: str | Path) -> Path:
    """`root/<label>/<image>` -> manifest at `out` (labels by folder name: code, English or Chinese)."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise CeladonError(f"{root} is not a folder; expected root/<label>/<image files>")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    mapping = _resolve_all(taxonomy, task, [p.name for p in folders], str(root))
    paths, codes = [], []
    for folder in folders:
        for image in sorted(folder.rglob("*")):
            if image.is_file() and image.suffix.lower() in IMAGE_EXTENSIONS:
                paths.append(str(image))
                codes.append(mapping[folder.name])
    if not paths:
        raise CeladonError(f"{root}: no images found in class folders (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return write_manifest(Manifest(_frame(taxonomy, task, paths, codes), root, taxonomy), out)


def load_class_mapping(path: str | Path) -> dict[str, str]:
    """Class index -> name from a names-per-line text, `index,name` CSV, or JSON/YAML mapping/list."""
    path = Path(path)
    if not path.is_file():
        raise CeladonError(f"class mapping {path} does not exist")
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() in (".json", ".yaml", ".yml"):
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
        if isinstance(data, list):
            return {str(i): str(name) for i, name in enumerate(data)}
        if isinstance(data, dict):
            return {str(k): str(v) for k, v in data.items()}
        raise CeladonError(f"{path}: expected a list of names or an index -> name mapping")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if all("," in line and line.split(",", 1)[0].strip().isdigit() for line in lines):
        return {line.split(",", 1)[0].strip(): line.split(",", 1)[1].strip() for line in lines}
    return {str(i): name for i, name in enumerate(lines)}


SPLIT_COLUMN = "source_split"  # the dataset's own split, kept by `celadon data split --keep-split source_split`


def _read_label_csv(csv_path: Path, task: str, taxonomy: Taxonomy, mapping: dict[str, str],
                    classes: str | Path | None) -> tuple[list[str], list[str]]:
    """(filenames, label names) of one `filename,label` CSV (header optional)."""
    if not csv_path.is_file():
        raise CeladonError(f"{csv_path} does not exist")
    problems: list = []
    text = decode_text(csv_path.read_bytes(), str(csv_path), None, problems)
    if text is None:
        raise CeladonError(problems[0].detail)
    rows = [row for row in csv.reader(text.splitlines()) if any(cell.strip() for cell in row)]
    if rows and len(rows[0]) >= 2 and not _is_label(rows[0][1], mapping, taxonomy, task):
        rows = rows[1:]  # a header such as "filename,label"
    bad = [f"line {i + 1}" for i, row in enumerate(rows) if len(row) < 2 or not row[0].strip()]
    if bad:
        raise CeladonError(f"{csv_path}: {', '.join(bad[:5])} need 'filename,label'")
    raw = [row[1].strip() for row in rows]
    indices = sorted({r for r in raw if r.isdigit()}, key=int)
    if indices and not mapping:
        raise CeladonError(f"{csv_path}: labels {', '.join(indices[:6])}{' …' if len(indices) > 6 else ''} look like "
                           "class indices; pass --classes FILE (one class name per line, in index order)")
    unmapped = [r for r in indices if r not in mapping]
    if unmapped:
        raise CeladonError(f"{csv_path}: class indices {unmapped} are not in the class mapping {classes}")
    return [row[0].strip() for row in rows], [mapping.get(r, r) for r in raw]


def import_label_csv(
    csv_paths: str | Path | list, task: str, taxonomy: Taxonomy, out: str | Path,
    images: str | Path | None = None, classes: str | Path | None = None, splits: dict[str, str | Path] | None = None,
) -> Path:
    """`filename,label` rows (header optional) from one or more CSVs -> one manifest; images relative to
    `images` (default: each CSV's folder). `splits` maps a split name to its CSV (a dataset's train.csv and
    val.csv): the rows keep it in a `source_split` column."""
    sources = [(None, Path(p).resolve()) for p in ([csv_paths] if isinstance(csv_paths, str | Path) else csv_paths)]
    sources += [(name, Path(p).resolve()) for name, p in (splits or {}).items()]
    if not sources:
        raise CeladonError("import-csv: give at least one CSV, or --split-from NAME=CSV")
    mapping = load_class_mapping(classes) if classes else {}
    paths, names, split_of = [], [], []
    for split, csv_path in sources:
        files, labels = _read_label_csv(csv_path, task, taxonomy, mapping, classes)
        base = Path(images).resolve() if images else csv_path.parent
        paths += [str(base / f) for f in files]
        names += labels
        split_of += [split] * len(files)
    codes = _resolve_all(taxonomy, task, sorted(set(names)), ", ".join(str(p) for _, p in sources))
    frame = _frame(taxonomy, task, paths, [codes[n] for n in names])
    if splits:
        frame[SPLIT_COLUMN] = split_of
    root = Path(images).resolve() if images else Path(os.path.commonpath([str(p.parent) for _, p in sources]))
    return write_manifest(Manifest(frame, root, taxonomy), out)


def _is_label(value: str, mapping: dict[str, str], taxonomy: Taxonomy, task: str) -> bool:
    value = value.strip()
    if value in mapping or value.isdigit():
        return True
    try:
        taxonomy.resolve(task, value)
        return True
    except KeyError:
        return False

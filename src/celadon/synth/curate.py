"""`celadon synth curate`: what training may use of a generation run, as one plain manifest.

QC verdicts (`qc.csv`) and the human review decisions (`review.sqlite` in the generation run) are joined
here, once, into `accepted.csv`: the synthetic images that passed QC and were not rejected in review, with
their labels and a `train_tasks` column naming the tasks each image trains: the tasks QC verified
(`qc_tasks`, when QC ran with task masks), else every task whose label it carries. Training reads this
manifest and nothing else of synthesis: it does not know the review database or the generation run's
folder layout.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from celadon.data.manifest import TRAIN_TASKS_COLUMN, Manifest, passed_qc, read_manifest, write_manifest
from celadon.errors import CeladonError
from celadon.review.store import rejected_items
from celadon.runinfo import write_json, write_run_info
from celadon.taxonomy import load_taxonomy


@dataclass
class CurateConfig:
    qc: str = ""  # a `celadon synth qc` folder (its qc.csv) or the qc.csv itself
    generation: str | None = None  # the generation run reviewed in `celadon review serve` (its review.sqlite)
    out: str = ""  # where accepted.csv and curate.json go
    taxonomy: str | None = None


def curate_frame(manifest: Manifest, rejected: set[str]) -> tuple[Manifest, dict]:
    """Rows that passed QC and were not rejected in review, each with the tasks it trains; and the counts."""
    frame = manifest.frame
    passed = passed_qc(frame)
    reviewed = (~frame["item_id"].astype(str).isin(rejected)).to_numpy() if "item_id" in frame else (
        np.ones(len(frame), dtype=bool))
    keep = passed & reviewed
    accepted = frame[keep].copy()
    verified = accepted.get("qc_tasks")
    trains = [[t for t in manifest.tasks if row[t] is not None
               and (verified is None or t in str(verified.iat[i]).split(","))]
              for i, row in enumerate(accepted.to_dict("records"))]
    accepted[TRAIN_TASKS_COLUMN] = [",".join(tasks) for tasks in trains]
    counts = {"generated": int(len(frame)), "qc_pass": int(passed.sum()),
              "rejected_in_review": int((passed & ~reviewed).sum()), "accepted": int(keep.sum()),
              "images_per_task": {t: sum(t in tasks for tasks in trains) for t in manifest.tasks}}
    return manifest.with_frame(accepted), counts


def curate(config: CurateConfig) -> Path:
    """Write `accepted.csv` (a manifest) and `curate.json` (counts) in `config.out`."""
    table = Path(config.qc) / "qc.csv" if Path(config.qc).is_dir() else Path(config.qc)
    if not table.exists():
        raise CeladonError(f"{config.qc}: no qc.csv; run `celadon synth qc` on the generation run first")
    manifest = read_manifest(table, load_taxonomy(config.taxonomy))
    rejected = rejected_items(config.generation) if config.generation else set()
    accepted, counts = curate_frame(manifest, rejected)
    out = Path(config.out)
    path = write_manifest(accepted, out / "accepted.csv")
    write_json(out / "curate.json", counts)
    write_run_info(out, "synth curate", asdict(config))
    return path

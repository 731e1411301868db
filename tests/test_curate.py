"""`celadon synth curate`: QC verdicts and review decisions joined once into the manifest training reads."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from celadon.cli import main
from celadon.review.store import ReviewStore
from conftest import write_manifest_csv

FULL = {"dynasty": "song", "kiln": "ru", "glaze": "tianqing", "type": "washer"}


def test_curate_keeps_what_passed_qc_and_review_with_the_tasks_each_image_trains(tmp_path, write_images, capsys):
    paths = write_images(4)
    (tmp_path / "qc").mkdir()
    rows = [{"path": f"../{paths[0]}", **FULL, "item_id": "i0", "qc_pass": "True"},
            {"path": f"../{paths[1]}", **FULL, "item_id": "i1", "qc_pass": "False"},   # failed QC
            {"path": f"../{paths[2]}", **FULL, "item_id": "i2", "qc_pass": "True"},    # rejected in review
            {"path": f"../{paths[3]}", **{**FULL, "glaze": ""}, "item_id": "i3", "qc_pass": "1"}]
    write_manifest_csv(tmp_path / "qc" / "qc.csv", rows, "path,dynasty,kiln,glaze,type,item_id,qc_pass")
    (tmp_path / "generation").mkdir()
    ReviewStore(tmp_path / "generation").decide(["i2"], "rejected", "ann", "wrong glaze")

    assert main(["synth", "curate", str(tmp_path / "qc"), "--generation", str(tmp_path / "generation"),
                 "--out", str(tmp_path / "curated"), "--quiet"]) == 0
    assert "2 of 4 images accepted (3 passed QC, 1 of those rejected in review)" in capsys.readouterr().out
    accepted = pd.read_csv(tmp_path / "curated" / "accepted.csv", dtype=str, keep_default_na=False)
    assert list(accepted["item_id"]) == ["i0", "i3"]
    assert list(accepted["train_tasks"]) == ["dynasty,kiln,glaze,type", "dynasty,kiln,type"]
    assert (tmp_path / "curated" / accepted["path"].iat[0]).resolve() == (tmp_path / paths[0]).resolve()
    counts = json.loads((tmp_path / "curated" / "curate.json").read_text())
    assert counts == {"generated": 4, "qc_pass": 3, "rejected_in_review": 1, "accepted": 2,
                      "images_per_task": {"dynasty": 2, "kiln": 2, "glaze": 1, "type": 2}}


def test_training_masks_every_task_a_row_does_not_train(tmp_path, write_images):
    from celadon.classify.data import MISSING, ImageCache, prepare_samples
    from celadon.data.manifest import read_manifest
    from celadon.taxonomy import load_taxonomy

    paths = write_images(3)
    rows = [{"path": paths[0], **FULL, "train_tasks": "dynasty,kiln,glaze,type"},
            {"path": paths[1], **FULL, "train_tasks": "type"},  # QC could verify only the vessel type
            {"path": paths[2], **FULL, "train_tasks": "glaze,type"}]
    pd.DataFrame(rows).to_csv(tmp_path / "s.csv", index=False)  # quoted: the cells hold commas
    manifest = read_manifest(tmp_path / "s.csv", load_taxonomy())
    tasks = ["dynasty", "kiln", "glaze", "type"]
    samples = prepare_samples(manifest, tasks, ImageCache(tmp_path / "cache", 32), synthetic=True,
                              masked_tasks=("kiln",), progress=False)  # the arm's own mask applies too
    trained = samples.targets != MISSING
    assert trained.tolist() == [[True, False, True, True], [False, False, False, True], [False, False, True, True]]
    from celadon.data.manifest import trained_labels

    labels = trained_labels(manifest)  # what the imbalance "after" tables count: the labels that train
    assert labels.notna().to_numpy().tolist() == [[True, True, True, True], [False, False, False, True],
                                                  [False, False, True, True]]
    assert np.all(samples.synthetic)

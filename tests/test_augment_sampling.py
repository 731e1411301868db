"""Threshold augmentation, 1/sqrt(n) sampling and effective-number class weights."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from celadon.data.augment import AugmentConfig, augment_image, augment_manifest, load_row_image, plan_augmentation
from celadon.data.manifest import read_manifest
from celadon.data.sampling import (
    combination_sample_weights,
    effective_number_weights,
    make_sampler,
    task_class_weights,
)
from celadon.errors import CeladonError
from celadon.taxonomy import load_taxonomy
from conftest import write_manifest_csv

TAXONOMY = load_taxonomy()


def _splits(tmp_path, write_images, sizes, split="train"):
    rows, start = [], 0
    glazes = ["white", "black", "celadon", "green"]
    for combo, n in enumerate(sizes):
        for p in write_images(n, start=start):
            rows.append({"path": p, "dynasty": "song", "kiln": "ding", "glaze": glazes[combo], "type": "bowl",
                         "split": split})
        start += n
    header = "path,dynasty,kiln,glaze,type,split"
    return read_manifest(write_manifest_csv(tmp_path / "splits.csv", rows, header), TAXONOMY)


def test_augmentation_is_deterministic_and_changes_pixels(write_images, tmp_path):
    from celadon.data.images import load_image

    img = load_image(tmp_path / write_images(1)[0])
    a, b, c = augment_image(img, 7), augment_image(img, 7), augment_image(img, 8)
    assert a.size == img.size
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    assert not np.array_equal(np.asarray(a), np.asarray(img))


def test_rare_train_combinations_are_topped_up_to_target(tmp_path, write_images):
    manifest = _splits(tmp_path, write_images, [3, 12, 1])
    frame = manifest.frame.copy()
    frame.loc[frame.index[:1], "split"] = "val"  # a val image of the rare combo must never be copied
    manifest = manifest.with_frame(frame)
    plan = plan_augmentation(manifest, AugmentConfig(threshold=10, target=20, seed=1))
    per_combo = plan.groupby("glaze").size().to_dict()
    assert per_combo == {"white": 20 - 2, "celadon": 20 - 1}  # black has 12 >= threshold: untouched
    val_path = manifest.frame["path"].iat[0]
    assert val_path not in set(plan["source"])
    # Copies are spread over the originals round-robin.
    assert plan[plan.glaze == "white"]["source"].value_counts().tolist() == [9, 9]
    assert plan["aug_seed"].is_unique


def test_virtual_and_files_modes_give_the_same_pixels_and_resume(tmp_path, write_images):
    manifest = _splits(tmp_path, write_images, [2])
    config = AugmentConfig(threshold=5, target=4, mode="virtual")
    virtual_path, _ = augment_manifest(manifest, tmp_path / "virtual", config, progress=False)
    files_path, _ = augment_manifest(manifest, tmp_path / "files", AugmentConfig(threshold=5, target=4,
                                                                                   mode="files"), progress=False)
    virtual, files = read_manifest(virtual_path, TAXONOMY), read_manifest(files_path, TAXONOMY)
    assert len(virtual) == len(files) == 4 and list(virtual.frame["origin"]) == ["real", "real", "augmented",
                                                                                 "augmented"]
    for i in range(4):
        assert np.array_equal(np.asarray(load_row_image(virtual, i)), np.asarray(load_row_image(files, i)))
    written = sorted((tmp_path / "files" / "images").iterdir())
    assert len(written) == 2
    mtimes = [p.stat().st_mtime_ns for p in written]
    written[0].unlink()  # a killed run: one image missing
    augment_manifest(manifest, tmp_path / "files", AugmentConfig(threshold=5, target=4, mode="files"),
                     progress=False)
    again = sorted((tmp_path / "files" / "images").iterdir())
    assert [p.name for p in again] == [p.name for p in written]
    assert again[1].stat().st_mtime_ns == mtimes[1]  # kept, not rewritten


def test_augment_needs_a_split(tmp_path, write_images):
    paths = write_images(1)
    manifest = read_manifest(write_manifest_csv(tmp_path / "m.csv", [{"path": paths[0], "glaze": "white"}]),
                             TAXONOMY)
    with pytest.raises(CeladonError, match="run `celadon data split` first"):
        plan_augmentation(manifest, AugmentConfig())


def test_effective_number_weights_by_hand():
    counts = [1, 300, 1000, 0]
    raw = [(1 - 0.999) / (1 - 0.999**n) for n in counts[:3]]
    relative = [r / raw[2] for r in raw]  # the most frequent class weighs 1
    assert relative[0] > 600 and 2 < relative[1] < 3  # only the first is capped
    capped = [min(r, 10.0) for r in relative]
    expected = [c * 3 / sum(capped) for c in capped]
    weights = effective_number_weights(counts, beta=0.999, cap=10.0)
    assert weights.tolist() == pytest.approx([*expected, 0.0])
    assert weights[0] / weights[2] == pytest.approx(10.0)  # the cap bounds the rarest/commonest ratio
    assert weights[:3].mean() == pytest.approx(1.0)
    uncapped = effective_number_weights(counts, beta=0.999, cap=1e6)
    assert uncapped[0] / uncapped[2] == pytest.approx(raw[0] / raw[2])


def test_task_class_weights_follow_the_taxonomy_order(tmp_path, write_images):
    manifest = _splits(tmp_path, write_images, [4, 1])
    weights = task_class_weights(manifest, "glaze", beta=0.9, cap=10.0)
    codes = TAXONOMY.task("glaze").codes
    assert weights.shape == (len(codes),)
    raw_white, raw_black = (1 - 0.9) / (1 - 0.9**4), (1 - 0.9) / (1 - 0.9**1)
    relative_black = raw_black / raw_white  # 3.44: below the cap
    assert weights[codes.index("white")].item() == pytest.approx(2 / (1 + relative_black), rel=1e-6)
    assert weights[codes.index("black")].item() == pytest.approx(2 * relative_black / (1 + relative_black), rel=1e-6)
    assert weights[codes.index("celadon")].item() == 0.0


def test_sqrt_sampling_gives_combinations_sqrt_mass():
    keys = ["a"] * 100 + ["b"] * 4
    weights = combination_sample_weights(keys)
    assert weights[0] == pytest.approx(0.1) and weights[-1] == pytest.approx(0.5)
    sampler = make_sampler(weights, num_samples=40_000, seed=3)
    drawn = torch.tensor(list(sampler))
    share_b = (drawn >= 100).float().mean().item()
    assert share_b == pytest.approx(math.sqrt(4) / (math.sqrt(4) + math.sqrt(100)), abs=0.01)  # 1/6
    assert list(make_sampler(weights, 50, seed=3)) == list(make_sampler(weights, 50, seed=3))


def test_weights_cli(tmp_path, write_images, capsys):
    from celadon.cli import main

    _splits(tmp_path, write_images, [5, 2])
    assert main(["data", "weights", str(tmp_path / "splits.csv"), "--out", str(tmp_path / "w.json")]) == 0
    saved = pd.read_json(tmp_path / "w.json", typ="series")
    assert saved["class_weights"]["glaze"]["black"] > saved["class_weights"]["glaze"]["white"] > 0


def test_validate_accepts_virtual_rows_but_still_finds_real_duplicates(tmp_path, write_images):
    from celadon.data.validate import ValidationConfig, validate_manifest

    manifest = _splits(tmp_path, write_images, [2])
    (tmp_path / "images" / "copy.jpg").write_bytes((tmp_path / manifest.frame["path"].iat[0]).read_bytes())
    frame = manifest.frame.copy()
    frame.loc[len(frame)] = {**frame.iloc[0].to_dict(), "path": "images/copy.jpg"}
    path, _ = augment_manifest(manifest.with_frame(frame), tmp_path / "aug", AugmentConfig(threshold=5, target=5),
                               progress=False)
    # augmented.csv lives in aug/ and points back to the images: they are inside the dataset's folder, the root.
    report = validate_manifest(path, TAXONOMY, ValidationConfig(root=str(tmp_path)), progress=False)
    assert [p.kind for p in report.problems] == ["exact_duplicate"]  # the copy, not the 2 virtual rows
    outside = validate_manifest(path, TAXONOMY, ValidationConfig(), progress=False)
    assert {p.kind for p in outside.errors} == {"outside_root"}

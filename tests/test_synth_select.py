"""Seven-tier LoRA selection on constructed data, and structured captions."""

import json
from pathlib import Path

import pandas as pd
import pytest

from celadon.data.manifest import Manifest, read_manifest
from celadon.errors import CeladonError
from celadon.synth.captions import caption, write_lora_folder
from celadon.synth.select import SelectConfig, select_lora_set
from celadon.taxonomy import load_taxonomy
from conftest import write_manifest_csv

TAXONOMY = load_taxonomy()


def _pool(sizes: dict[tuple[str, str], int], copies_to: int = 0) -> Manifest:
    """Training rows per (glaze, type) with `n` originals, topped up with virtual copies to `copies_to`."""
    rows = []
    for (glaze, kind), n in sizes.items():
        for i in range(max(n, copies_to)):
            rows.append({"path": f"{glaze}_{kind}_{i % n}.jpg", "dynasty": "song", "kiln": "ding", "glaze": glaze,
                         "type": kind, "split": "train", "aug_seed": None if i < n else 1000 + i})
    rows.append({"path": "val.jpg", "dynasty": "song", "kiln": "ding", "glaze": "black", "type": "cup",
                 "split": "val", "aug_seed": None})
    return Manifest(pd.DataFrame(rows).astype(object), Path("."), TAXONOMY)


SIZES = {("moon_white", "vase"): 1, ("white", "cup"): 1, ("ivory_white", "washer"): 3, ("brown", "bowl"): 7,
         ("white", "bowl"): 200, ("ivory_white", "bowl"): 150, ("celadon", "plate"): 300}


def test_tiers_follow_the_paper_in_priority_order():
    pool = _pool(SIZES, copies_to=40)
    selected = select_lora_set(pool, SelectConfig(total=1000, pairs=(("white", "ivory_white"),)))
    by_tier = selected.groupby("tier")
    combos = {t: set(zip(g["glaze"], g["type"], strict=True)) for t, g in by_tier}
    assert combos[1] == {("moon_white", "vase"), ("white", "cup")}
    assert combos[2] == {("ivory_white", "washer")}
    assert combos[4] == {("brown", "bowl")}
    sizes = by_tier.size().to_dict()
    assert sizes[1] == 2 * 30 and sizes[2] == 25 and sizes[4] == 25
    # Tier 3: 25 images split between the two confused glazes, on the vessel type they share (bowl).
    pair = selected[selected["tier"] == 3]
    assert pair["glaze"].value_counts().to_dict() == {"white": 13, "ivory_white": 12}
    assert set(pair["type"]) == {"bowl"}
    # Originals come before augmented copies: the singleton's one original is always in.
    singleton = selected[(selected["glaze"] == "moon_white")]
    assert singleton["aug_seed"].isna().sum() == 1
    train_rows = int((pool.frame["split"] == "train").sum())  # 810: the whole pool fits in the budget
    assert len(selected) == min(1000, train_rows)
    assert not selected[["path", "aug_seed"]].astype(str).duplicated().any()  # no image chosen twice
    assert not selected["path"].eq("val.jpg").any()  # never from val/test
    assert selected.groupby("tier").size().index.tolist()[-1] == 7  # the rest is general fill
    for kind in ("vase", "cup", "washer"):  # type balance tops small types up to 100 where the pool allows
        assert (selected["type"] == kind).sum() == min(100, 40)


def test_budget_is_spent_in_priority_order_and_scaled():
    selected = select_lora_set(_pool(SIZES, copies_to=40), SelectConfig(total=100))
    # At 100 images the paper's targets scale by 0.1: 3 per extreme-rare combination, 2-3 per very rare.
    assert selected.groupby("tier").size().to_dict()[1] == 6
    assert len(selected) == 100


def test_confusion_pairs_come_from_baseline_metrics_on_validation(tmp_path):
    metrics = {"split": "val", "tasks": {"glaze": {"confusion_pairs": [{"pair": ["celadon", "white"], "count": 9}]}}}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    selected = select_lora_set(_pool(SIZES), SelectConfig(total=500, metrics=str(tmp_path / "metrics.json")))
    pair = selected[selected["tier"] == 3]
    assert set(pair["reason"]) == {"confusion pair celadon vs white"}
    assert set(pair["glaze"]) == {"celadon", "white"}


@pytest.mark.parametrize("split, message", [("test", "computed on the test split, which must not steer"),
                                            (None, "records no split")])
def test_selection_and_plans_refuse_metrics_not_known_to_be_from_validation(tmp_path, split, message):
    from celadon.synth.plan import PlanConfig, make_plan

    metrics = {"tasks": {"glaze": {"confusion_pairs": [{"pair": ["celadon", "white"], "count": 9}]}}}
    if split:
        metrics["split"] = split
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(metrics))
    pool = _pool(SIZES)
    with pytest.raises(CeladonError, match=message):
        select_lora_set(pool, SelectConfig(total=500, metrics=str(path)))
    with pytest.raises(CeladonError, match=message):
        make_plan(pool, PlanConfig(total=20, metrics=str(path)))
    if split == "test":  # a user who knows why may opt in, explicitly
        allowed = select_lora_set(pool, SelectConfig(total=500, metrics=str(path), allow_test_metrics=True))
        assert (allowed["tier"] == 3).any()
        assert len(make_plan(pool, PlanConfig(total=20, metrics=str(path), allow_test_metrics=True))) == 20


def test_captions_follow_the_paper_structure():
    text = caption({"dynasty": "yuan", "kiln": "jun", "glaze": "moon_white", "type": "vase"}, TAXONOMY)
    assert text == ("Yuan dynasty, Jun kiln produced, Chinese porcelain, vase for display only, no spout or handle, "
                    "decorative vessel, with moon white glaze with pale blue lighter than bluish green, thick opaque "
                    "glaze")
    partial = caption({"dynasty": None, "kiln": None, "glaze": "white", "type": "bowl"}, TAXONOMY)
    assert partial.startswith("Chinese porcelain, bowl") and "None" not in partial


def test_lora_folder_for_diffusers_and_kohya(tmp_path, write_images):
    paths = write_images(2)
    rows = [{"path": p, "dynasty": "song", "kiln": "ru", "glaze": "tianqing", "type": "washer", "tier": 1}
            for p in paths]
    selection = read_manifest(write_manifest_csv(tmp_path / "sel.csv", rows, "path,dynasty,kiln,glaze,type,tier"),
                              TAXONOMY)
    metadata = write_lora_folder(selection, tmp_path / "lora", progress=False)
    records = [json.loads(line) for line in metadata.read_text().splitlines()]
    assert len(records) == 2 and records[0]["tier"] == 1
    image = tmp_path / "lora" / records[0]["file_name"]
    assert image.exists() and image.with_suffix(".txt").read_text().strip() == records[0]["text"]
    assert records[0]["text"].startswith("Song dynasty, Ru kiln produced")


def test_bad_inputs_are_clear(tmp_path):
    with pytest.raises(CeladonError, match="no training rows"):
        select_lora_set(Manifest(pd.DataFrame(columns=["path", "dynasty", "kiln", "glaze", "type"]),
                                 tmp_path, TAXONOMY), SelectConfig())

"""Structure-preserving generation: the generator registry, source photos (deterministic, spread, training
only), img2img through the same pipeline, QC against each image's source, per-task trust from QC into
training, and Table 6's relative fidelity."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from celadon.cli import main
from celadon.data.manifest import read_manifest
from celadon.errors import CeladonError
from celadon.runinfo import load_config
from celadon.synth.generate import GENERATORS, GenerateConfig, generate, generator_settings
from celadon.synth.pipeline import resolve_profile
from celadon.synth.sources import assign_sources, structure_tasks
from celadon.taxonomy import load_taxonomy
from conftest import noise_image

# (dynasty, kiln, glaze, type, split): photos
PHOTOS = {("song", "ding", "white", "bowl", "train"): 3, ("song", "ding", "ivory_white", "bowl", "train"): 1,
          ("song", "ding", "black", "vase", "train"): 2, ("song", "ding", "white", "bowl", "val"): 2,
          ("song", "ding", "white", "bowl", "test"): 2, ("yuan", "jun", "moon_white", "bowl", "train"): 1}


@pytest.fixture
def splits(tmp_path) -> Path:
    rows, n = [], 0
    (tmp_path / "photos").mkdir()
    for (dynasty, kiln, glaze, kind, split), count in PHOTOS.items():
        for _ in range(count):
            noise_image(500 + n, 48).save(tmp_path / "photos" / f"p{n:02d}.png")
            rows.append({"path": f"photos/p{n:02d}.png", "dynasty": dynasty, "kiln": kiln, "glaze": glaze,
                         "type": kind, "split": split})
            n += 1
    pd.DataFrame(rows).to_csv(tmp_path / "splits.csv", index=False)
    return tmp_path / "splits.csv"


def _plan(items: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([{"item_id": f"i{i:05d}", "seed": 7 + i, "prompt": "p", "negative_prompt": "",
                          "pair_with": "", **item} for i, item in enumerate(items)])


IVORY = {"dynasty": "song", "kiln": "ding", "glaze": "ivory_white", "type": "bowl"}


def test_sources_share_the_vessel_spread_and_never_come_from_val_or_test(splits):
    real = read_manifest(splits, load_taxonomy())
    assert structure_tasks(real.tasks, "glaze", ("glaze", "type")) == ["dynasty", "kiln", "type"]
    plan = _plan([IVORY] * 7)
    chosen = assign_sources(plan, real, max_uses=2, translate=True)
    frame = real.frame.assign(abs=[str(p.resolve()) for p in real.image_paths()]).set_index("abs")
    used = frame.loc[chosen["source"]]
    assert set(used["split"]) == {"train"}  # never a validation or test photo
    # Song Ding bowls first (3 white, 1 ivory), another glaze first (translation): the white ones, 2 uses each
    first_six = used.iloc[:6]
    assert (first_six["glaze"] == "white").all() and first_six.index.value_counts().max() == 2
    assert used.iloc[6]["glaze"] == "ivory_white"  # then the target's own class, before relaxing the match
    assert list(chosen["source_shared"].iloc[:6]) == ["dynasty,kiln,type"] * 6
    assert chosen["source_shared"].iat[6] == "dynasty,kiln,glaze,type"
    assert assign_sources(plan, real, max_uses=2, translate=True).equals(chosen)  # deterministic
    # Past every Song Ding bowl's cap the match is relaxed to the type (the combination role is kept longest).
    relaxed = frame.loc[assign_sources(_plan([IVORY] * 10), real, max_uses=2, translate=True)["source"]]
    assert set(relaxed["type"]) == {"bowl"} and "yuan" in set(relaxed["dynasty"])
    same = frame.loc[assign_sources(_plan([IVORY] * 3), real)["source"]]  # the default: the target's own class
    assert list(same["glaze"]) == ["ivory_white", "ivory_white", "white"]  # its one photo twice, then the others


def test_a_confusion_item_starts_from_the_other_class_of_its_pair(splits):
    real = read_manifest(splits, load_taxonomy())
    plan = _plan([{**IVORY, "glaze": "white", "purpose": "confusion", "pair_with": "ivory_white"}])
    frame = real.frame.assign(abs=[str(p.resolve()) for p in real.image_paths()]).set_index("abs")
    assert frame.loc[assign_sources(plan, real)["source"], "glaze"].iat[0] == "ivory_white"


def test_the_registry_names_each_generator_and_keeps_txt2img_settings_as_they_were():
    assert {"txt2img", "img2img"} <= set(GENERATORS) and GENERATORS["img2img"].needs_sources
    txt = generator_settings(GenerateConfig(plan="p.csv"))
    assert "generator" not in txt and "strength" not in txt and "real" not in txt  # keys of old runs hold
    img = generator_settings(GenerateConfig(plan="p.csv", generator="img2img", strength=0.3, real="s.csv"))
    assert img["generator"] == "img2img" and img["strength"] == 0.3 and img["real"] == "s.csv"
    with pytest.raises(CeladonError, match="generator 'sketch' is unknown; use one of txt2img, img2img"):
        generator_settings(GenerateConfig(generator="sketch"))


def test_img2img_re_renders_the_source_in_strength_x_steps(tiny_sd, splits, tmp_path, monkeypatch):
    from diffusers import UNet2DConditionModel

    plan = _plan([IVORY, {**IVORY, "glaze": "white"}, IVORY])
    plan.to_csv(tmp_path / "plan.csv", index=False)
    calls = []
    original = UNet2DConditionModel.forward
    monkeypatch.setattr(UNet2DConditionModel, "forward", lambda self, *a, **k: calls.append(1) or original(
        self, *a, **k))
    config = GenerateConfig(plan=str(tmp_path / "plan.csv"), out=str(tmp_path / "img2img"), model=str(tiny_sd),
                            steps=4, batch_size=3, threads=1, generator="img2img", strength=0.5, real=str(splits))
    table = pd.read_csv(generate(config, progress=False))
    assert len(calls) == 2  # one batch, half of the 4 denoising steps
    assert load_config(GenerateConfig, tmp_path / "img2img", "synth generate") == config  # the stage loads back
    assert list(table["generator"]) == ["img2img"] * 3 and table["strength"].eq(0.5).all()
    real = read_manifest(splits, load_taxonomy())
    train = {str(p.resolve()) for p, s in zip(real.image_paths(), real.frame["split"], strict=True) if s == "train"}
    assert set(table["source"]) <= train
    native = resolve_profile(str(tiny_sd)).resolution
    assert Image.open(tmp_path / "img2img" / table["path"].iat[0]).size == (native, native) != (48, 48)
    calls.clear()
    txt = GenerateConfig(plan=str(tmp_path / "plan.csv"), out=str(tmp_path / "txt2img"), model=str(tiny_sd),
                         steps=4, batch_size=3, threads=1)
    assert pd.read_csv(generate(txt, progress=False))["generator"].eq("txt2img").all() and len(calls) == 4
    with pytest.raises(CeladonError, match=r"other settings \(strength\)"):
        generate(GenerateConfig(**{**config.__dict__, "strength": 0.7}), progress=False)
    with pytest.raises(CeladonError, match="--real splits.csv"):
        generate(GenerateConfig(**{**config.__dict__, "real": None, "out": str(tmp_path / "x")}), progress=False)


def test_qc_fails_a_near_copy_of_its_own_source(splits, tmp_path):
    real = read_manifest(splits, load_taxonomy())
    source = real.image_paths()[0]
    Image.open(source).resize((32, 32)).save(tmp_path / "copy.png")  # what strength ~0 would give
    noise_image(900, 32).save(tmp_path / "new.png")
    rows = [{"path": name, **IVORY, "item_id": f"i{i}", "source": str(source.resolve()),
             "source_shared": "dynasty,kiln,type"} for i, name in enumerate(["copy.png", "new.png"])]
    pd.DataFrame(rows).to_csv(tmp_path / "generated.csv", index=False)
    assert main(["synth", "qc", str(tmp_path / "generated.csv"), "--real", str(splits), "--out",
                 str(tmp_path / "qc"), "--quiet"]) == 0
    qc = pd.read_csv(tmp_path / "qc" / "qc.csv").set_index("item_id")
    assert "near copy of its source photo" in qc.at["i0", "qc_reasons"] and not qc.at["i0", "qc_pass"]
    assert "source" not in str(qc.at["i1", "qc_reasons"])
    assert qc.at["i0", "source_distance"] < qc.at["i1", "source_distance"]
    # The stage re-runs bit for bit from the run.yaml it recorded.
    assert main(["synth", "qc", "-c", str(tmp_path / "qc" / "run.yaml"), "--out", str(tmp_path / "qc2"),
                 "--quiet"]) == 0
    assert (tmp_path / "qc2" / "qc.csv").read_bytes() == (tmp_path / "qc" / "qc.csv").read_bytes()


def test_task_masks_train_only_what_qc_verified(splits, tmp_path):
    """A wrong label masks its task instead of failing the image; inherited labels count as verified; the
    curated manifest carries the masks into training."""
    assert main(["train", str(splits), "--out", str(tmp_path / "judge"), "--image-size", "32", "--batch-size", "4",
                 "--epochs", "1", "--max-steps-per-epoch", "1", "--threads", "1", "--cache-dir",
                 str(tmp_path / "cache"), "--quiet"]) == 0
    rows = []
    sources = read_manifest(splits, load_taxonomy()).image_paths()
    for i in range(4):
        noise_image(700 + i, 32).save(tmp_path / f"s{i}.png")
        rows.append({"path": f"s{i}.png", **IVORY, "item_id": f"i{i}",  # i3: txt2img, no source
                     "source": str(sources[i].resolve()) if i < 3 else "",
                     "source_shared": "dynasty,kiln,type" if i < 3 else ""})
    command = ["synth", "qc", str(tmp_path / "generated.csv"), "--real", str(splits), "--out", str(tmp_path / "qc"),
               "--model", str(tmp_path / "judge"), "--fidelity-tasks", "glaze,type", "--task-masks", "--quiet"]
    pd.DataFrame(rows).to_csv(tmp_path / "generated.csv", index=False)
    assert main(command) == 0
    read = pd.read_csv(tmp_path / "qc" / "qc.csv", keep_default_na=False)
    for i in (0, 3):  # intend what the judge sees on two images, so both verdicts occur
        rows[i] |= {"glaze": read["pred_glaze"].iat[i], "type": read["pred_type"].iat[i]}
    pd.DataFrame(rows).to_csv(tmp_path / "generated.csv", index=False)
    assert main(command) == 0
    qc = pd.read_csv(tmp_path / "qc" / "qc.csv", keep_default_na=False).set_index("item_id")
    for item, row in qc.iterrows():
        judged = [t for t in ("glaze", "type") if row[f"pred_{t}"] == row[t]]
        inherited = ["dynasty", "kiln"] if item != "i3" else []
        expected = [t for t in ("dynasty", "kiln", "glaze", "type") if t in judged + inherited]
        assert row["qc_tasks"] == ",".join(expected)
        assert row["qc_pass"] == bool(expected)
        assert ("glaze looks like" in row["qc_masked"]) == ("glaze" not in judged)
        assert "looks like" not in row["qc_reasons"]  # masked, not failed
    # The judge also read each source photo (what img2img started from), against the intended labels.
    from celadon.classify.predict import load_model, predict_images

    readings, _ = predict_images(load_model(tmp_path / "judge"), sources[:3], top_k=1)
    assert qc["source_pred_type"].tolist() == [r["type"][0][0] for r in readings] + [""]
    source_fidelity = json.loads((tmp_path / "qc" / "qc_summary.json").read_text())["source_fidelity"]
    right = [(r["glaze"][0][0] == qc.at[f"i{i}", "glaze"], r["type"][0][0] == qc.at[f"i{i}", "type"])
             for i, r in enumerate(readings)]
    assert source_fidelity == {"glaze": pytest.approx(sum(g for g, _ in right) / 3),
                               "type": pytest.approx(sum(t for _, t in right) / 3),
                               "glaze+type": pytest.approx(sum(g and t for g, t in right) / 3)}
    assert main(["synth", "curate", str(tmp_path / "qc"), "--out", str(tmp_path / "curated"), "--quiet"]) == 0
    accepted = pd.read_csv(tmp_path / "curated" / "accepted.csv", keep_default_na=False).set_index("item_id")
    assert qc.at["i0", "qc_tasks"] == "dynasty,kiln,glaze,type" and qc.at["i3", "qc_tasks"] == "glaze,type"
    passed = qc[qc["qc_pass"]]
    assert accepted["train_tasks"].to_dict() == passed["qc_tasks"].to_dict()


# Constructed judge readings. Real validation photos (glaze, type, read glaze, read type): the plan's
# celadon bowl has one photo (glaze misread), its white vase three (type misread once); black jars are not
# in the plan. The plan: three celadon bowls, one white vase, one brown dish (no real photo of it).
REAL_READINGS = [("celadon", "bowl", "white", "bowl"), ("white", "vase", "white", "vase"),
                 ("white", "vase", "white", "vase"), ("white", "vase", "white", "jar"),
                 ("black", "jar", "black", "jar"), ("black", "jar", "white", "jar")]
PLAN = [("celadon", "bowl")] * 3 + [("white", "vase"), ("brown", "dish")]
# Per generator, the judge's reading of each plan item, plus a sixth celadon bowl that was never judged.
SYNTHETIC_READINGS = {
    "img2img": [("celadon", "bowl"), ("white", "bowl"), ("white", "bowl"), ("white", "jar"), ("brown", "dish")],
    "lora": [("white", "bowl")] * 3 + [("black", "vase"), ("white", "dish")]}


def _readings(rows) -> pd.DataFrame:
    return pd.DataFrame([{"path": f"v{i}.png", "glaze": g, "type": t, "pred_glaze": pg, "pred_type": pt}
                         for i, (g, t, pg, pt) in enumerate(rows)])


def test_relative_fidelity_weights_real_photos_to_the_plans_mix_of_combinations():
    from celadon.evaluate.fidelity import relative_fidelity, standardised_real

    real = _readings(REAL_READINGS)
    plan = pd.DataFrame(PLAN, columns=["glaze", "type"])
    keys = ["glaze", "type"]
    # Pooled, the plan's four photos would give glaze 3/4; weighted 3:1 to the plan, (3*0 + 1*1)/4.
    assert standardised_real(plan, real, keys, ["glaze"]) == pytest.approx(0.25)
    assert standardised_real(plan, real, keys, ["type"]) == pytest.approx((3 * 1 + 2 / 3) / 4)
    assert standardised_real(plan, real, keys, ["glaze", "type"]) == pytest.approx((2 / 3) / 4)
    assert standardised_real(plan.iloc[4:], real, keys, ["glaze"]) is None  # no real photo of a brown dish
    synthetic = _readings([(*c, *r) for c, r in zip(PLAN, SYNTHETIC_READINGS["img2img"], strict=True)]
                          + [("celadon", "bowl", "", "")])
    glaze = relative_fidelity(synthetic, real, keys, ["glaze"])
    # The dish has no real photo and the unjudged bowl no reading: 4 items compared, 2 glazes right.
    assert (glaze.items, glaze.photos, glaze.synthetic) == (4, 4, pytest.approx(0.5))
    assert glaze.relative == pytest.approx(0.5 / 0.25)
    assert relative_fidelity(synthetic, real, keys, ["type"]).relative == pytest.approx(0.75 / ((3 + 2 / 3) / 4))
    both = relative_fidelity(synthetic, real, keys, ["glaze", "type"])
    assert both.relative == pytest.approx(0.25 / ((2 / 3) / 4))
    assert both.interval is None  # four photos: too many resamples lose every right reading to bound it
    # Ten and forty times the items and photos (same mix): the same estimate, intervals around it that
    # narrow about as 1/sqrt(n).
    bigger, biggest = (relative_fidelity(pd.concat([synthetic] * n), pd.concat([real] * n), keys, ["glaze", "type"])
                       for n in (10, 40))
    assert bigger.relative == pytest.approx(both.relative) == biggest.relative
    assert bigger.interval[0] < both.relative < bigger.interval[1]
    assert biggest.interval[0] < both.relative < biggest.interval[1]
    width = [b.interval[1] - b.interval[0] for b in (bigger, biggest)]
    assert 0.35 < width[1] / width[0] < 0.65
    never = relative_fidelity(pd.concat([synthetic.assign(pred_glaze="black")] * 10), pd.concat([real] * 10),
                              keys, ["glaze"])
    assert never.relative == 0.0 and never.interval == (0.0, 0.0)


def test_item_clusters_join_items_that_share_a_source_or_a_combination():
    from celadon.evaluate.fidelity import item_clusters

    frame = pd.DataFrame({"glaze": ["a", "a", "b", "c", "d", "e"], "type": ["x"] * 6,
                          "source": ["p1", "p2", "p2", "p3", "", None]})
    # a-a share a combination, p2 joins b to them; c, d and e stand alone (no source is not a shared source)
    assert item_clusters(frame, ["glaze", "type"]).tolist() == [0, 0, 0, 1, 2, 3]
    assert item_clusters(frame.drop(columns="source"), ["glaze", "type"]).tolist() == [0, 0, 1, 2, 3, 4]


def test_cluster_bootstrap_widens_the_interval_where_items_of_a_source_agree_together():
    """40 sources of 10 re-renders each, every re-render of a source read alike: 40 independent readings, not
    400. Resampling clusters gives an interval about sqrt(10) wider than resampling items."""
    from celadon.evaluate.fidelity import item_clusters, relative_fidelity

    rng = np.random.default_rng(3)
    right = rng.random(40) < 0.6
    synthetic = pd.DataFrame({"glaze": "a", "type": "x", "pred_glaze": np.repeat(np.where(right, "a", "b"), 10),
                              "source": np.repeat([f"p{i}" for i in range(40)], 10)})
    real = pd.DataFrame({"glaze": "a", "type": "x", "pred_glaze": np.where(rng.random(400) < 0.8, "a", "b")})
    # one combination joins every item: the clusters here are the sources
    clusters = pd.factorize(synthetic["source"])[0]
    by_item = relative_fidelity(synthetic, real, ["glaze", "type"], ["glaze"], n_resamples=1000)
    by_cluster = relative_fidelity(synthetic, real, ["glaze", "type"], ["glaze"], n_resamples=1000,
                                   clusters=clusters)
    assert by_item.relative == by_cluster.relative and (by_item.clusters, by_cluster.clusters) == (400, 40)
    ratio = (by_cluster.interval[1] - by_cluster.interval[0]) / (by_item.interval[1] - by_item.interval[0])
    assert 2.2 < ratio < 4.2, ratio
    assert item_clusters(synthetic, ["glaze", "type"]).max() == 0  # by combination too: a single cluster


def test_table6_shows_standardised_real_photos_relative_fidelity_and_the_sources(tmp_path):
    from celadon.experiment.results import table6

    reference = tmp_path / "reference"
    reference.mkdir()
    _readings(REAL_READINGS).to_csv(reference / "predictions.csv", index=False)
    (reference / "metrics.json").write_text(json.dumps({"split": "val", "tasks": {"glaze": {"top1": 0.6}}}))
    pd.DataFrame(PLAN, columns=["glaze", "type"]).to_csv(tmp_path / "plan.csv", index=False)
    for name, readings in SYNTHETIC_READINGS.items():
        (tmp_path / name).mkdir()
        items = _readings([(*c, *r) for c, r in zip(PLAN, readings, strict=True)])
        if name == "img2img":  # beside an independent judge, the reference (QC's second reader) reads all right
            items = items.assign(second_pred_glaze=items["glaze"], second_pred_type=items["type"])
        items.to_csv(tmp_path / name / "qc.csv", index=False)
        summary = {"n_images": 5, "pass_rate": 0.5, "reasons": {"copy_of_source": 2} if name == "img2img" else {},
                   "label_fidelity": {"glaze": 0.6, "type": 0.6, "glaze+type": 0.4}}
        if name == "img2img":
            summary["source_fidelity"] = {"glaze": 0.8, "type": 1.0, "glaze+type": 0.8}
            summary["second_reader"] = {"glaze": {"judge_confirms": 3, "second_reader_misreads": 1,
                                                  "second_reader_agrees_judge_rejects": 0}}
        (tmp_path / name / "qc_summary.json").write_text(json.dumps(summary))
    runs = SimpleNamespace(judge_eval=SimpleNamespace(path=reference), fold_judges=[],
                           reference_eval=SimpleNamespace(path=reference), config=SimpleNamespace(taxonomy=None))
    table = table6(runs, {"lora": tmp_path / "lora", "img2img": tmp_path / "img2img"}, tmp_path / "plan.csv")
    rows = table["rows"]
    assert rows["label fidelity glaze"]["real photos"] == pytest.approx(0.25)
    assert rows["label fidelity glaze+type"]["real photos"] == pytest.approx(1 / 6)
    assert rows["relative fidelity glaze"] == {"lora": 0.0, "img2img": pytest.approx(2.0)}
    assert rows["relative fidelity type"] == {"lora": pytest.approx(1 / (11 / 12)),
                                              "img2img": pytest.approx(0.75 / (11 / 12))}
    assert rows["relative fidelity type, 95% cluster interval"] == {"lora": None, "img2img": None}  # too few photos
    assert rows["items compared (their combination has real photos)"] == {"lora": 4, "img2img": 4}
    assert rows["clusters resampled (items sharing a source or a combination)"] == {"lora": 3, "img2img": 3}
    assert rows["images"] == {"lora": 5, "img2img": 5, "real photos": 4}  # the black jars are not the plan's
    assert rows["source photos: label fidelity type"] == {"lora": None, "img2img": 1.0}
    assert rows["QC fails: copy of source"] == {"lora": None, "img2img": 2}
    assert rows["glaze labels the judge confirms, the reference misreads"] == {"lora": None, "img2img": 1}
    # old judge and new from one run: the reference's readings of the same items, against its validation readings
    assert rows["relative fidelity glaze, read by the reference (not independent)"] == {"img2img": pytest.approx(4.0)}
    assert rows["relative fidelity type, read by the reference (not independent)"] == {
        "img2img": pytest.approx(12 / 11)}
    assert table["judge_real_top1"] == {"glaze": pytest.approx(4 / 6), "type": pytest.approx(5 / 6)}


def test_sources_do_not_depend_on_where_the_collection_lives(splits, tmp_path):
    import shutil

    moved = tmp_path / "elsewhere" / "deeper"
    shutil.copytree(splits.parent / "photos", moved / "photos")
    shutil.copy(splits, moved / "splits.csv")
    plan = _plan([IVORY] * 5 + [{**IVORY, "glaze": "white"}] * 4)
    here = assign_sources(plan, read_manifest(splits, load_taxonomy()), max_uses=1)
    there = assign_sources(plan, read_manifest(moved / "splits.csv", load_taxonomy()), max_uses=1)
    assert [Path(p).relative_to(splits.parent) for p in here["source"]] == [
        Path(p).relative_to(moved) for p in there["source"]]

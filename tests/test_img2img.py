"""Structure-preserving generation: the generator registry, source photos (deterministic, spread, training
only), img2img through the same pipeline, QC against each image's source, per-task trust from QC into
training, and Table 6's relative fidelity."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

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
    for i in range(4):
        noise_image(700 + i, 32).save(tmp_path / f"s{i}.png")
        rows.append({"path": f"s{i}.png", **IVORY, "item_id": f"i{i}",
                     "source_shared": "dynasty,kiln,type" if i < 3 else ""})  # i3: txt2img, no source
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
    assert main(["synth", "curate", str(tmp_path / "qc"), "--out", str(tmp_path / "curated"), "--quiet"]) == 0
    accepted = pd.read_csv(tmp_path / "curated" / "accepted.csv", keep_default_na=False).set_index("item_id")
    assert qc.at["i0", "qc_tasks"] == "dynasty,kiln,glaze,type" and qc.at["i3", "qc_tasks"] == "glaze,type"
    passed = qc[qc["qc_pass"]]
    assert accepted["train_tasks"].to_dict() == passed["qc_tasks"].to_dict()


def test_relative_fidelity_divides_by_the_judge_on_real_photos_of_the_same_combinations(tmp_path):
    from celadon.experiment.results import relative_fidelity, table6

    assert relative_fidelity({"lora": 0.3, "img2img": 0.54, "real photos": 0.6}, 0.6) == {
        "lora": pytest.approx(0.5), "img2img": pytest.approx(0.9)}
    assert relative_fidelity({"lora": None, "img2img": 0.2}, 0.0) == {"lora": None, "img2img": None}
    # Constructed judge predictions on real validation photos: of the plan's two combinations, glaze right on
    # 3 of 4 photos, type on 2 of 4, both on 2 of 4; a photo of another combination is not counted.
    reference = tmp_path / "reference"
    reference.mkdir()
    rows = [("celadon", "bowl", "celadon", "bowl"), ("celadon", "bowl", "celadon", "vase"),
            ("white", "vase", "white", "vase"), ("white", "vase", "black", "jar"), ("black", "jar", "white", "jar")]
    pd.DataFrame([{"path": f"v{i}.png", "glaze": g, "type": t, "pred_glaze": pg, "pred_type": pt}
                  for i, (g, t, pg, pt) in enumerate(rows)]).to_csv(reference / "predictions.csv", index=False)
    (reference / "metrics.json").write_text(json.dumps({"split": "val", "tasks": {"glaze": {"top1": 0.6}}}))
    pd.DataFrame({"glaze": ["celadon", "white"], "type": ["bowl", "vase"]}).to_csv(tmp_path / "plan.csv")
    for name, glaze, joint in (("lora", 0.3, 0.1), ("img2img", 0.6, 0.25)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "qc_summary.json").write_text(json.dumps({
            "n_images": 10, "pass_rate": 0.5, "reasons": {"copy_of_source": 2} if name == "img2img" else {},
            "label_fidelity": {"glaze": glaze, "type": 0.5, "glaze+type": joint}}))
    runs = SimpleNamespace(reference_eval=SimpleNamespace(path=reference), config=SimpleNamespace(taxonomy=None))
    table = table6(runs, {"lora": tmp_path / "lora", "img2img": tmp_path / "img2img"}, tmp_path / "plan.csv")
    rows6 = table["rows"]
    assert rows6["label fidelity glaze"]["real photos"] == 0.75 and rows6["label fidelity glaze+type"][
        "real photos"] == 0.5
    assert rows6["relative fidelity glaze"] == {"lora": pytest.approx(0.4), "img2img": pytest.approx(0.8)}
    assert rows6["relative fidelity type"] == {"lora": pytest.approx(1.0), "img2img": pytest.approx(1.0)}
    assert rows6["relative fidelity glaze+type"] == {"lora": pytest.approx(0.2), "img2img": pytest.approx(0.5)}
    assert rows6["QC fails: copy of source"] == {"lora": None, "img2img": 2}
    assert table["judge_real_top1"] == {"glaze": 0.6}


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

"""An independent judge: a classifier trained on a render of its own reads synthetic images' labels, sharing
no image with the collection that the generators start from and the LoRA learns from."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from celadon.errors import CeladonError
from celadon.experiment.config import load_study
from celadon.experiment.judge import JUDGE_SEED_OFFSET, judge_render_config
from celadon.experiment.study import plan_study
from test_experiment import SMALL, _write

OWN = ["synthesis.judge=own_render"]


def _hashes(folder: Path) -> set[str]:
    return {hashlib.sha256(p.read_bytes()).hexdigest() for p in (folder / "images").glob("*.jpg")}


def test_the_judges_render_shares_no_image_with_the_collection(tmp_path):
    from celadon.data.embedded import make_demo

    config = load_study(_write(tmp_path / "s.yaml", SMALL | {"out": str(tmp_path / "out")}), {}, OWN)
    render = judge_render_config(config)
    assert render.seed == SMALL["embedded"]["seed"] and render.n == SMALL["embedded"]["n"]
    assert render.image_seed == SMALL["embedded"]["seed"] + JUDGE_SEED_OFFSET
    same = dataclasses.replace(render, image_seed=None)  # the study's own collection
    collection = make_demo(tmp_path / "collection", same, progress=False)
    judge = make_demo(tmp_path / "judge", render, progress=False)
    assert len(_hashes(collection.parent)) > 100 and not _hashes(collection.parent) & _hashes(judge.parent)
    # the same labels, row for row: the two judges differ in the photos they saw, not in the mix of labels
    import pandas as pd

    assert pd.read_csv(collection).equals(pd.read_csv(judge))


def test_qc_and_table_6_read_the_judge_not_the_reference_when_it_has_its_own_render(tmp_path):
    config = load_study(_write(tmp_path / "s.yaml", SMALL | {"out": str(tmp_path / "out")}), {}, OWN)
    stages, _ = plan_study(config)
    by_label = {s.label: s for s in stages}
    judge, reference = by_label["train judge (own render) (seed 0)"], by_label["train reference (seed 0)"]
    judge_data = by_label["render the judge's own collection"]
    assert judge_data.settings["image_seed"] == SMALL["embedded"]["seed"] + JUDGE_SEED_OFFSET
    assert f"split-{by_label['split the judge' + chr(39) + 's collection'].key}" in judge.inputs
    for qc in (s for s in stages if s.kind == "qc"):  # the judge gates; the reference reads as second reader
        assert f"train-{judge.key}" in qc.inputs and f"train-{reference.key}" in qc.inputs
    # the judge is read on the study's own validation photos (Table 6's real column)
    evaluation = by_label["evaluate judge (own render) on val (seed 0)"]
    assert evaluation.settings["split"] == "val" and f"split-{by_label['adaptive split + leakage check'].key}" \
        in evaluation.inputs
    # selection and plans are still steered by the reference
    assert f"evaluate-{by_label['evaluate reference on val (seed 0)'].key}" in by_label["plan A"].inputs
    plain, _ = plan_study(load_study(tmp_path / "s.yaml"))
    assert not any("judge" in s.label for s in plain)  # the reference judges unless the study says otherwise


def test_a_judge_the_study_cannot_have_is_a_one_line_error(tmp_path):
    study = _write(tmp_path / "s.yaml", SMALL | {"out": str(tmp_path / "out")})
    with pytest.raises(CeladonError, match="synthesis.judge: 'oracle' is not one of reference, own_render"):
        load_study(study, {}, ["synthesis.judge=oracle"])
    with pytest.raises(CeladonError, match="synthesis.judge_render: applies to judge: own_render"):
        load_study(study, {}, ["synthesis.judge_render={seed: 5}"])
    with pytest.raises(CeladonError, match="synthesis.judge_render.sed: unknown setting"):
        load_study(study, {}, [*OWN, "synthesis.judge_render={sed: 5}"])
    (tmp_path / "m.csv").write_text("path,dynasty,kiln,glaze,type\n")
    with pytest.raises(CeladonError, match="own_render draws a second embedded collection"):
        load_study(study, {"manifest": str(tmp_path / "m.csv")}, OWN)


@pytest.mark.slow
def test_a_study_with_its_own_judge_says_what_the_judge_trained_on(tmp_path):
    from celadon.cli import main

    config = _write(tmp_path / "s.yaml", SMALL | {"out": str(tmp_path / "out"), "seeds": [0]})
    assert main(["run", str(config), "--quiet", *[f"--set={s}" for s in OWN]]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    judge = results["judge"]
    assert judge["kind"] == "own_render" and judge["independent"] is True
    assert set(judge["validation_top1"]) == {"dynasty", "kiln", "glaze", "type"}
    assert "no image of the collection" in judge["trained_on"]
    assert results["table6"]["judge_real_top1"] == judge["validation_top1"]


def test_folds_keep_copies_together_and_deal_each_combination_round_the_folds(tmp_path):
    import shutil

    import pandas as pd

    from celadon.data.embedded import EmbeddedConfig, make_demo
    from celadon.data.folds import assign_folds, original_files, read_folds, write_fold_tables
    from celadon.data.manifest import read_manifest
    from celadon.taxonomy import load_taxonomy

    manifest = make_demo(tmp_path / "data", EmbeddedConfig(n=60, size=32, seed=5, workers=1), progress=False)
    frame = pd.read_csv(manifest).assign(split="train")
    frame.loc[50:, "split"] = "val"
    root = manifest.parent
    shutil.copy(root / frame.at[0, "path"], root / "images" / "copy_of_0.jpg")  # a byte copy of photo 0
    extra = [frame.loc[0].to_dict() | {"path": "images/copy_of_0.jpg"},
             frame.loc[1].to_dict() | {"source": frame.at[1, "path"], "aug_seed": 7}]  # an augmentation of photo 1
    pd.concat([frame, pd.DataFrame(extra)], ignore_index=True).to_csv(root / "splits.csv", index=False)
    table = read_manifest(root / "splits.csv", load_taxonomy())
    folds = assign_folds(table, 3, seed=1)
    assert (folds.iloc[50:60] == -1).all() and (folds.drop(index=range(50, 60)) >= 0).all()
    assert folds.iat[60] == folds.iat[0] and folds.iat[61] == folds.iat[1]  # the copy and the augmentation
    combos = table.combination_keys(table.taxonomy.combination)[folds >= 0]
    for _, per_combo in folds[folds >= 0].groupby(combos.to_numpy()):
        counts = per_combo.value_counts().reindex(range(3), fill_value=0)
        assert counts.max() - counts.min() <= 1 + (per_combo.index.isin([0, 1, 60, 61]).any())
    assert assign_folds(table, 3, seed=1).equals(folds) and not assign_folds(table, 3, seed=2).equals(folds)
    written = write_fold_tables(table, tmp_path / "folds", 3, seed=1)
    by_file = read_folds(written["folds"])
    files = original_files(table)
    for fold, path in enumerate(written["tables"]):
        kept = read_manifest(path, load_taxonomy())
        assert not {f for f in original_files(kept) if by_file.get(f) == fold}  # no photo of its own fold
        assert len(kept) == len(table) - int((folds == fold).sum())
    assert sorted(by_file) == sorted({files[i] for i in range(len(table)) if folds.iat[i] >= 0})
    with pytest.raises(CeladonError, match="cross-fitting needs at least 2 folds"):
        assign_folds(table, 1)


@pytest.mark.slow
def test_cross_fitted_judges_read_each_img2img_item_with_the_judge_that_left_out_its_source(tmp_path):
    """A collection of the user's own photos, with a taxonomy of its own: no second render, so K judges each
    train without one fold of the training photos."""
    import pandas as pd
    import yaml

    from celadon.cli import main
    from celadon.data.embedded import EmbeddedConfig, make_demo
    from celadon.data.folds import original_files, read_folds
    from celadon.data.manifest import read_manifest, resolve_image_path
    from celadon.taxonomy import load_taxonomy
    from test_collections import BRONZES
    from test_experiment import SMALL

    demo = pd.read_csv(make_demo(tmp_path / "data", EmbeddedConfig(n=240, size=48, seed=3, workers=1), progress=False))
    frame = pd.DataFrame({"path": "data/" + demo["path"], "workshop": demo["kiln"], "form": demo["type"],
                          "period": demo["dynasty"].map({"song": "Early", "yuan": "Late"})})
    frame.dropna(how="all", subset=["period", "workshop", "form"]).to_csv(tmp_path / "bronzes.csv", index=False)
    (tmp_path / "bronzes.yaml").write_text(BRONZES.format(workshops=", ".join(sorted(demo["kiln"].dropna().unique())),
                                                          forms=", ".join(sorted(demo["type"].dropna().unique()))))
    synthesis = SMALL["synthesis"] | {"judge": "cross_fit", "judge_folds": 2, "qc": {"outlier_z": 100.0},
                                      "generators": {"lora": {}, "img2img": {"generator": "img2img", "strength": 0.5}}}
    config = SMALL | {"name": "bronzes", "out": str(tmp_path / "out"), "manifest": str(tmp_path / "bronzes.csv"),
                      "taxonomy": str(tmp_path / "bronzes.yaml"), "synthesis": synthesis, "seeds": [0],
                      "arms": [{"name": "baseline"}]}
    config.pop("embedded")
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(config))
    assert main(["run", str(tmp_path / "study.yaml"), "--quiet"]) == 0

    stages = tmp_path / "out" / "stages"
    [folds_stage] = stages.glob("folds-*")
    folds = read_folds(folds_stage / "folds.csv")
    taxonomy = load_taxonomy(str(tmp_path / "bronzes.yaml"))
    trained_on = [set(original_files(read_manifest(folds_stage / f"without_fold_{i}.csv", taxonomy))) for i in (0, 1)]
    read = 0
    for qc_dir in stages.glob("qc-*"):
        qc = read_manifest(qc_dir / "qc.csv", taxonomy)
        generator = set(qc.frame["generator"])
        if generator & {"img2img", "copy", "roundtrip"}:
            for i in range(len(qc)):
                source = str(resolve_image_path(qc.root, qc.frame["source"].iat[i]).resolve())
                fold = int(qc.frame["judge_fold"].iat[i])
                assert fold == folds[source] and str(qc.frame["judge_excluded_source"].iat[i]) == "True"
                assert source not in trained_on[fold]
                read += 1
        elif generator == {"txt2img"}:
            assert set(qc.frame["judge_fold"].astype(int)) == {0}
            assert set(qc.frame["judge_excluded_source"].astype(str)) == {"False"}
    assert read >= 3 * 6
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    judge = results["judge"]
    assert judge["kind"] == "cross_fit" and judge["folds"] == 2 and len(judge["validation_top1_per_judge"]) == 2
    assert sum(judge["photos_per_fold"]) == len(folds)
    rows = results["table6"]["rows"]
    assert {"copy", "roundtrip", "img2img", "lora"} <= set(rows["images"])
    assert "relative fidelity form, 95% cluster interval" in rows

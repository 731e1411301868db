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
    for qc in (s for s in stages if s.kind == "qc"):
        assert f"train-{judge.key}" in qc.inputs and f"train-{reference.key}" not in qc.inputs
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

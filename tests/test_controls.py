"""The controls a generator is read against: `oracle` (perfect new images of the plan's labels) and `replay`
(img2img's source photos shown again), through generation and QC."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from celadon.data.images import load_image, resize_square
from celadon.data.manifest import read_manifest
from celadon.errors import CeladonError
from celadon.synth.controls import oracle_seed
from celadon.synth.generate import GenerateConfig, generate, generator_settings
from celadon.synth.qc import QCConfig, run_qc
from celadon.taxonomy import load_taxonomy
from test_img2img import IVORY, _plan, splits  # noqa: F401 - splits is a fixture


def _write_plan(tmp_path: Path, items: list[dict]) -> Path:
    path = tmp_path / "plan.csv"
    _plan(items).to_csv(path, index=False)
    return path


def test_the_oracle_draws_new_objects_with_exactly_the_plan_labels(tmp_path):
    from celadon.data.embedded import _row_seed

    items = [IVORY, {**IVORY, "glaze": "celadon", "type": "vase", "kiln": "longquan"},
             {**IVORY, "glaze": "black", "type": "teabowl", "kiln": "jian"}]
    plan = _write_plan(tmp_path, items)
    config = GenerateConfig(plan=str(plan), out=str(tmp_path / "oracle"), generator="oracle", resolution=48,
                            threads=1)
    table = pd.read_csv(generate(config, progress=False))
    assert list(table[["glaze", "type"]].itertuples(index=False, name=None)) == [
        (i["glaze"], i["type"]) for i in items]
    assert set(table["generator"]) == {"oracle"} and "model" not in table  # no diffusion model was loaded
    images = [np.asarray(load_image(tmp_path / "oracle" / p)) for p in table["path"]]
    assert all(im.shape == (48, 48, 3) for im in images)
    assert not np.array_equal(images[0], images[1])
    # its render seeds are a namespace of their own: never a collection image's
    collection = {_row_seed(s, i) for s in range(3) for i in range(3000)}
    assert not {oracle_seed(s) for s in _plan(items)["seed"]} & collection
    # deterministic, and the same object the renderer draws for that seed and those labels
    again = pd.read_csv(generate(GenerateConfig(**{**config.__dict__, "out": str(tmp_path / "again")}),
                                 progress=False))
    assert all((tmp_path / "oracle" / a).read_bytes() == (tmp_path / "again" / b).read_bytes()
               for a, b in zip(table["path"], again["path"], strict=True))
    assert generator_settings(config).keys().isdisjoint({"strength", "real", "max_source_uses", "translate"})


def test_the_oracle_refuses_a_plan_it_cannot_draw(tmp_path):
    path = tmp_path / "plan.csv"
    pd.DataFrame([{"item_id": "i0", "seed": 1, "prompt": "p", "negative_prompt": "", "form": "bowl"}]).to_csv(
        path, index=False)
    with pytest.raises(CeladonError, match="oracle draws the embedded porcelain collection; this plan has no"):
        generate(GenerateConfig(plan=str(path), out=str(tmp_path / "o"), generator="oracle", threads=1),
                 progress=False)


def test_replay_shows_each_source_again_with_its_own_labels_and_qc_keeps_it_whole(splits, tmp_path):  # noqa: F811
    real = read_manifest(splits, load_taxonomy())
    plan = _write_plan(tmp_path, [IVORY, {**IVORY, "glaze": "white"}, {**IVORY, "type": "vase", "glaze": "black"}])
    config = GenerateConfig(plan=str(plan), out=str(tmp_path / "replay"), generator="replay", real=str(splits),
                            resolution=32, threads=1)
    table = pd.read_csv(generate(config, progress=False))
    by_path = {str(p.resolve()): i for i, p in enumerate(real.image_paths())}
    for row in table.to_dict("records"):
        source = by_path[str(Path(row["source"]).resolve())]
        assert real.frame["split"].iat[source] == "train"
        expected = resize_square(load_image(real.image_path(source)), 32)  # exactly what img2img starts from
        assert np.array_equal(np.asarray(Image.open(tmp_path / "replay" / row["path"]).convert("RGB")), expected)
        assert [row[t] for t in real.tasks] == [real.frame[t].iat[source] for t in real.tasks]  # its own labels
        assert row["source_shared"] == "dynasty,kiln,glaze,type"
    assert table["glaze"].iat[0] == "ivory_white" and "strength" not in table
    summary = run_qc(QCConfig(table=str(tmp_path / "replay" / "generated.csv"), real=str(splits),
                              out=str(tmp_path / "qc"), task_masks=True, outlier_z=100.0, min_contrast=0.0),
                     progress=False)
    qc = pd.read_csv(tmp_path / "qc" / "qc.csv")
    assert summary["n_pass"] == len(table)  # copies of training photos by design: no memorised, no copy_of_source
    assert set(qc["qc_tasks"]) == {"dynasty,kiln,glaze,type"}


def test_roundtrip_is_the_source_through_the_vae_alone_with_the_items_labels(splits, tiny_sd, tmp_path):  # noqa: F811
    import torch

    from celadon.synth.controls import vae_round_trip
    from celadon.synth.pipeline import load_pipeline
    from celadon.synth.sources import source_images

    plan = _write_plan(tmp_path, [IVORY, {**IVORY, "glaze": "white"}])
    config = GenerateConfig(plan=str(plan), out=str(tmp_path / "rt"), generator="roundtrip", real=str(splits),
                            model=str(tiny_sd), resolution=32, threads=1)
    table = pd.read_csv(generate(config, progress=False))
    assert list(table["glaze"]) == ["ivory_white", "white"]  # the items' intended labels, as img2img's
    assert "strength" not in table and set(table["generator"]) == {"roundtrip"}
    batch = table.assign(source=table["source"])
    sources = source_images(batch, 32)
    torch.manual_seed(0)
    expected = vae_round_trip(load_pipeline(str(tiny_sd)), sources)
    got = [np.asarray(Image.open(tmp_path / "rt" / p).convert("RGB")) for p in table["path"]]
    assert all(np.array_equal(g, np.asarray(e)) for g, e in zip(got, expected, strict=True))
    assert not np.array_equal(got[0], np.asarray(sources[0]))  # the VAE changed it, a little
    assert np.abs(got[0].astype(int) - np.asarray(sources[0]).astype(int)).mean() < 60

"""The embedded procedural dataset: long tail, label correlations, determinism, resume, and the demo."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from celadon.cli import main
from celadon.data.embedded import KILN_TABLE, NAMED_RARE, EmbeddedConfig, combination_counts, make_demo
from celadon.data.embedded.render import Labels, render
from celadon.errors import CeladonError
from celadon.experiment.config import load_study


def test_default_long_tail_matches_the_papers_shape():
    counts = [n for _, n in combination_counts(EmbeddedConfig())]
    assert sum(counts) == 3000
    assert len(counts) >= 40
    assert sum(n <= 5 for n in counts) >= 10
    assert sum(n >= 100 for n in counts) >= 3
    assert counts.count(1) == 4


def test_combinations_respect_kiln_correlations():
    for (dynasty, kiln, glaze, kind), _ in combination_counts(EmbeddedConfig(seed=5)):
        _, p_song, glazes, types = KILN_TABLE[kiln]
        assert (glaze in glazes and kind in types) or (dynasty, kiln, glaze, kind) in NAMED_RARE
        assert p_song > 0 if dynasty == "song" else p_song < 1


def test_render_is_deterministic_and_label_dependent():
    a = render(Labels("song", "ru", "tianqing", "washer"), 48, np.random.default_rng(1))
    b = render(Labels("song", "ru", "tianqing", "washer"), 48, np.random.default_rng(1))
    c = render(Labels("song", "jian", "black", "teabowl"), 48, np.random.default_rng(1))
    assert a.size == (48, 48) and np.array_equal(np.asarray(a), np.asarray(b))
    # Same nuisance draw, other labels: the vessel region must differ strongly (black vs sky-celadon).
    assert np.abs(np.asarray(a, dtype=int) - np.asarray(c, dtype=int)).mean() > 10


def test_make_demo_writes_a_valid_manifest_and_resumes(tmp_path, capsys):
    config = EmbeddedConfig(n=120, size=40, seed=2, workers=1)
    manifest = make_demo(tmp_path / "demo", config, progress=False)
    frame = pd.read_csv(manifest)
    assert list(frame.columns) == ["path", "dynasty", "kiln", "glaze", "type"]
    assert len(frame) == 120 and frame["glaze"].notna().all()
    assert Image.open(tmp_path / "demo" / frame["path"].iat[0]).size == (40, 40)
    first = (tmp_path / "demo" / frame["path"].iat[5]).read_bytes()
    (tmp_path / "demo" / frame["path"].iat[5]).unlink()  # a killed run
    make_demo(tmp_path / "demo", config, progress=False)
    assert (tmp_path / "demo" / frame["path"].iat[5]).read_bytes() == first
    assert (tmp_path / "demo" / "run.yaml").exists()
    with pytest.raises(CeladonError, match="other settings"):
        make_demo(tmp_path / "demo", EmbeddedConfig(n=120, size=48, seed=2, workers=1), progress=False)
    assert main(["data", "validate", str(manifest), "--quiet"]) == 0


@pytest.mark.slow
def test_demo_command_is_the_demo_preset_study(tmp_path, capsys):
    """`celadon demo` runs `configs/demo.yaml` end to end (shrunk with --set) and prints timings, the
    results table and where the report is."""
    out = tmp_path / "run"
    small = ["embedded.n=150", "embedded.size=40", "workers=1", "threads=1", "classifier.image_size=32",
             "classifier.epochs=1", "synthesis.lora.steps=2", "synthesis.lora.checkpoint_every=2",
             "synthesis.plans.A.total=4", "synthesis.plans.B.total=6", "synthesis.generate.steps=4",
             "synthesis.qc.outlier_z=100", "synthesis.qc.fidelity_tasks=[]", "tsne_per_set=12"]
    args = ["demo", "--out", str(out), "--seeds", "0", "--quiet"]
    for item in small:
        args += ["--set", item]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "wall time per stage" in text and "train LoRA" in text and "generate B/lora" in text
    assert "wall time of the study" in text  # the stages' sum counts trainings that ran at once twice
    assert f"report: {(out / 'report.html').resolve()}" in text
    results = json.loads((out / "results.json").read_text())
    assert results["arms"] == [arm.name for arm in load_study("demo").arms]
    trained = {r["arm"] for r in results["table14"]}
    assert trained == set(results["arms"]) - set(results["skipped_arms"])
    assert (out / "config.yaml").exists() and (out / "run.yaml").exists()

"""The embedded procedural dataset: long tail, label correlations, determinism, resume, and the demo."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from celadon.cli import main
from celadon.data.embedded import KILN_TABLE, NAMED_RARE, DemoConfig, combination_counts, make_demo
from celadon.data.embedded.render import Labels, render
from celadon.errors import CeladonError


def test_default_long_tail_matches_the_papers_shape():
    counts = [n for _, n in combination_counts(DemoConfig())]
    assert sum(counts) == 3000
    assert len(counts) >= 40
    assert sum(n <= 5 for n in counts) >= 10
    assert sum(n >= 100 for n in counts) >= 3
    assert counts.count(1) == 4


def test_combinations_respect_kiln_correlations():
    for (dynasty, kiln, glaze, kind), _ in combination_counts(DemoConfig(seed=5)):
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
    config = DemoConfig(n=120, size=40, seed=2, workers=1)
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
        make_demo(tmp_path / "demo", DemoConfig(n=120, size=48, seed=2, workers=1), progress=False)
    assert main(["data", "validate", str(manifest), "--quiet"]) == 0


def test_demo_command_runs_every_stage(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["demo", "--out", str(out), "--n", "150", "--size", "40", "--workers", "1", "--image-size", "32",
                 "--epochs", "1", "--lora-steps", "2", "--plan-total", "6", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "wall time per stage" in text and "0 leaking duplicate pairs" in text
    splits = pd.read_csv(out / "split" / "splits.csv")
    augmented = pd.read_csv(out / "augment" / "augmented.csv")
    assert set(splits["split"]) == {"train", "val", "test"}
    assert len(augmented) > len(splits)
    assert set(augmented.loc[augmented["origin"] == "augmented", "split"]) == {"train"}
    for stage in ("data", "analysis", "split", "augment", "model", "model/eval-test", "lora-select", "lora-set",
                  "lora", "plan", "gen-vanilla", "gen-lora", "qc-vanilla", "qc-lora"):
        assert (out / stage / "run.yaml").exists(), stage
    assert (out / "model" / "model.safetensors").exists()
    assert "mean macro-F1 over tasks" in text and "glaze:" in text  # evaluate and predict printed
    records = (out / "lora-set" / "metadata.jsonl").read_text().splitlines()
    assert len(records) == len(pd.read_csv(out / "lora-select" / "selection.csv")) > 0
    assert (out / "lora" / "lora" / "pytorch_lora_weights.safetensors").exists()
    for name in ("vanilla", "lora"):
        generated = pd.read_csv(out / f"gen-{name}" / "generated.csv")
        assert generated["item_id"].tolist() == pd.read_csv(out / "plan" / "plan.csv")["item_id"].tolist()
        assert len(pd.read_csv(out / f"qc-{name}" / "qc.csv")) == 6
    table6 = pd.read_csv(out / "table6.csv", index_col=0)
    assert list(table6.columns) == ["vanilla", "lora"] and "label fidelity glaze+type" in table6.index

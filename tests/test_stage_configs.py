"""One source of every setting: command-line flags come from the stage's config dataclass, the study runner
builds the same config from the same defaults, and `-c run.yaml` re-runs a finished stage from what it
recorded."""

from __future__ import annotations

import argparse
import json

import pandas as pd
import pytest

from celadon.cli import build_parser, main
from celadon.cli.options import config_from_args
from celadon.experiment.runner import make
from celadon.runinfo import load_config
from celadon.synth.curate import CurateConfig
from celadon.synth.generate import GenerateConfig
from celadon.synth.lora import LoraConfig
from celadon.synth.qc import QCConfig

FULL = {"dynasty": "song", "kiln": "ru", "glaze": "tianqing", "type": "washer"}


def _args(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def test_the_command_line_and_a_study_config_build_the_same_stage_config():
    # The alpha mismatch (CLI --rank 16 gave alpha 16, `rank: 16` in a study alpha 8) cannot come back: both
    # routes start from LoraConfig's defaults.
    from_cli = config_from_args(LoraConfig, _args(["synth", "train-lora", "caps", "--out", "o", "--rank", "16"]),
                                "synth train-lora", ("data", "out"))
    from_study = make(LoraConfig, {"rank": 16}, data="caps", out="o")
    assert from_cli == from_study and from_cli.alpha == LoraConfig().alpha == 8.0
    assert from_cli.learning_rate == LoraConfig().learning_rate
    lr = config_from_args(LoraConfig, _args(["synth", "train-lora", "c", "--out", "o", "--lr", "0.001",
                                             "--train-text-encoder"]), "synth train-lora")
    assert lr.learning_rate == 0.001 and lr.train_text_encoder is True
    qc = config_from_args(QCConfig, _args(["synth", "qc", "t.csv", "--real", "s.csv", "--out", "q", "--model", "m",
                                           "--fidelity-tasks", "glaze,type", "--task-masks"]), "synth qc")
    assert qc.model_dir == "m" and qc.fidelity_tasks == ("glaze", "type") and qc.task_masks


def test_help_shows_each_default_from_the_dataclass(capsys):
    with pytest.raises(SystemExit):
        main(["synth", "generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    defaults = GenerateConfig()
    for flag, value in (("--lora-scale", defaults.lora_scale), ("--steps", defaults.steps),
                        ("--strength", defaults.strength), ("--max-source-uses", defaults.max_source_uses)):
        assert f"{flag} {flag.strip('-').replace('-', '_').upper()}" in text and f"(default: {value})" in text
    assert "img2img: a real training photo" in text  # the registry describes its generators


@pytest.fixture
def qc_folder(tmp_path, write_images):
    paths = write_images(3)
    (tmp_path / "qc").mkdir()
    rows = [{"path": f"../{paths[0]}", **FULL, "item_id": "i0", "qc_pass": "True", "qc_tasks": "glaze,type"},
            {"path": f"../{paths[1]}", **FULL, "item_id": "i1", "qc_pass": "False", "qc_tasks": ""},
            {"path": f"../{paths[2]}", **FULL, "item_id": "i2", "qc_pass": "True", "qc_tasks": "type"}]
    pd.DataFrame(rows).to_csv(tmp_path / "qc" / "qc.csv", index=False)
    return tmp_path / "qc"


def test_a_finished_stage_loads_back_and_re_runs_bit_for_bit_from_its_run_yaml(qc_folder, tmp_path):
    first = tmp_path / "curated"
    assert main(["synth", "curate", str(qc_folder), "--out", str(first), "--quiet"]) == 0
    config = load_config(CurateConfig, first, "synth curate")
    assert config == CurateConfig(qc=str(qc_folder), out=str(first))
    again = tmp_path / "again"
    assert main(["synth", "curate", "-c", str(first / "run.yaml"), "--out", str(again), "--quiet"]) == 0
    assert (again / "accepted.csv").read_bytes() == (first / "accepted.csv").read_bytes()
    assert json.loads((again / "curate.json").read_text()) == json.loads((first / "curate.json").read_text())
    assert load_config(CurateConfig, again) == CurateConfig(qc=str(qc_folder), out=str(again))
    accepted = pd.read_csv(first / "accepted.csv", keep_default_na=False)
    assert list(accepted["train_tasks"]) == ["glaze,type", "type"]  # QC's verified tasks train


def test_run_yaml_mistakes_are_one_line_errors(qc_folder, tmp_path, capsys):
    assert main(["synth", "curate", str(qc_folder), "--out", str(tmp_path / "c"), "--quiet"]) == 0
    assert main(["synth", "qc", "-c", str(tmp_path / "c"), "--quiet"]) == 2
    assert "records `celadon synth curate`, not `celadon synth qc`" in capsys.readouterr().err
    assert main(["synth", "curate", "--out", str(tmp_path / "d"), "--quiet"]) == 2
    assert "give QC, or -c RUN_YAML of an earlier run" in capsys.readouterr().err
    assert main(["synth", "curate", "-c", str(tmp_path / "missing.yaml"), "--quiet"]) == 2
    assert "missing.yaml does not exist" in capsys.readouterr().err
    (tmp_path / "c" / "run.yaml").write_text("command: synth curate\nconfig: {qc: x, out: y, colour: red}\n")
    assert main(["synth", "curate", "-c", str(tmp_path / "c"), "--quiet"]) == 2
    assert "colour is not a setting of this command" in capsys.readouterr().err


def test_data_stages_re_run_from_their_run_yaml(tmp_path):
    from celadon.data.augment import AugmentConfig
    from celadon.data.embedded import EmbeddedConfig
    from celadon.data.split import SplitConfig

    first = tmp_path / "demo"
    assert main(["data", "make-demo", str(first), "--n", "60", "--size", "32", "--workers", "1", "--quiet"]) == 0
    assert load_config(EmbeddedConfig, first, "data make-demo") == EmbeddedConfig(out=str(first), n=60, size=32,
                                                                                   workers=1)
    again = tmp_path / "again"
    assert main(["data", "make-demo", str(again), "-c", str(first), "--quiet"]) == 0
    assert (again / "manifest.csv").read_bytes() == (first / "manifest.csv").read_bytes()
    assert (again / "images" / "00007.jpg").read_bytes() == (first / "images" / "00007.jpg").read_bytes()
    assert main(["data", "split", str(first / "manifest.csv"), "--out", str(tmp_path / "split"), "--seed", "3",
                 "--quiet"]) == 0
    split_config = load_config(SplitConfig, tmp_path / "split", "data split")
    assert (split_config.seed, split_config.manifest) == (3, str(first / "manifest.csv"))
    assert main(["data", "split", "-c", str(tmp_path / "split"), "--out", str(tmp_path / "split2"), "--quiet"]) == 0
    splits = tmp_path / "split" / "splits.csv"
    assert (tmp_path / "split2" / "splits.csv").read_text() == splits.read_text()
    assert main(["data", "augment", str(splits), "--out", str(tmp_path / "aug"), "--threshold", "8", "--target",
                 "10", "--quiet"]) == 0
    recorded = load_config(AugmentConfig, tmp_path / "aug", "data augment")
    assert (recorded.splits, recorded.threshold, recorded.target) == (str(splits), 8, 10)
    assert main(["data", "augment", "-c", str(tmp_path / "aug"), "--out", str(tmp_path / "aug2"), "--quiet"]) == 0
    assert (tmp_path / "aug2" / "augmented.csv").read_text() == (tmp_path / "aug" / "augmented.csv").read_text()


def test_analyze_and_caption_re_run_from_their_run_yaml(tmp_path):
    from celadon.data.embedded import EmbeddedConfig, make_demo
    from celadon.data.imbalance import AnalyzeConfig
    from celadon.synth.captions import CaptionConfig

    manifest = make_demo(tmp_path / "demo", EmbeddedConfig(n=40, size=32, workers=1), progress=False)
    assert main(["data", "analyze", str(manifest), "--out", str(tmp_path / "a"), "--quiet"]) == 0
    assert load_config(AnalyzeConfig, tmp_path / "a", "data analyze") == AnalyzeConfig(str(manifest),
                                                                                         str(tmp_path / "a"))
    assert main(["data", "analyze", "-c", str(tmp_path / "a"), "--out", str(tmp_path / "b"), "--quiet"]) == 0
    assert (tmp_path / "b" / "imbalance.json").read_text() == (tmp_path / "a" / "imbalance.json").read_text()
    assert main(["synth", "caption", str(manifest), "--out", str(tmp_path / "c"), "--quiet"]) == 0
    assert load_config(CaptionConfig, tmp_path / "c", "synth caption") == CaptionConfig(str(manifest),
                                                                                          str(tmp_path / "c"))
    assert main(["synth", "caption", "-c", str(tmp_path / "c"), "--out", str(tmp_path / "d"), "--quiet"]) == 0
    assert (tmp_path / "d" / "metadata.jsonl").read_text() == (tmp_path / "c" / "metadata.jsonl").read_text()


def test_settings_added_to_a_stage_leave_earlier_study_keys_alone():
    from celadon.data.split import SplitConfig
    from celadon.experiment.stages import stage_key

    before = {"seed": 0, "key": None, "small_fractions": (0.70, 0.15, 0.15),
              "standard_fractions": (0.70, 0.20, 0.10), "standard_min": 10}  # SplitConfig's fields until f8fc319
    config = SplitConfig(manifest="m.csv", out="o", taxonomy="t.yaml")
    assert stage_key("split", config.key_settings(), []) == stage_key("split", before, [])
    assert SplitConfig(keep_split="fold").key_settings() == before | {"keep_split": "fold"}
    assert SplitConfig(group_duplicates=False).key_settings()["group_duplicates"] is False

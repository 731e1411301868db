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

"""`celadon bench estimate`: the study's workload divided by measured rates, spread over N devices."""

from __future__ import annotations

import json

import pytest

from celadon.cli import main
from celadon.errors import CeladonError
from celadon.experiment.config import load_study
from celadon.experiment.estimate import FORWARD_SHARE, Rates, Workload, estimate, study_workload


def _rates(train: float = 100.0, lora: float = 2.0, generate: float = 0.5, steps: int = 20) -> Rates:
    return Rates(train, lora, generate, steps)


def test_trainings_after_the_reference_share_the_devices_and_generation_shards():
    work = Workload(trainings=[1000, 2000, 2000, 2000, 2000], evaluated=[0] * 5, lora_steps=100,
                    lora_grid_images=16, generated={"B/lora": (40, 20), "B/img2img": (40, 10)})
    one, four = estimate(work, _rates(), 1), estimate(work, _rates(), 4)
    assert one["classifier trainings"] == pytest.approx(9000 / 100)
    assert four["classifier trainings"] == pytest.approx(10 + 20)  # the reference alone, then one round
    assert one["LoRA"] == pytest.approx(100 / 2 + 16 / 0.5) and four["LoRA"] == pytest.approx(25 / 2 + 16 / 0.5)
    assert one["generation"] == pytest.approx((40 + 20) / 0.5)  # img2img at half the steps costs half
    assert four["generation"] == pytest.approx(one["generation"] / 4)
    assert one["QC judge"] == pytest.approx(80 * FORWARD_SHARE / 100)
    assert one["total"] == pytest.approx(sum(v for k, v in one.items() if k != "total"))
    three = estimate(work, _rates(), 3)  # four trainings after the reference: two rounds
    assert three["classifier trainings"] == pytest.approx(10 + 20 + 20)


def test_a_study_without_synthesis_still_trains_its_reference_first_and_needs_no_other_rate(tmp_path):
    config = load_study("demo", {}, ["arms=[{name: baseline}]", "synthesis.compare_plan=null",
                                          "synthesis.sweep={}"])
    work = study_workload(config, 1729, 500, 271)
    epochs = config.classifier["epochs"]
    images = epochs * 28 * 64  # the demo's epochs of ceil(1729 / 64) batches of 64
    # seed 0 is the reference too: one training, read on validation (reference) and on test (baseline); every
    # training reads the validation photos once per epoch
    reference, arm = 500 * (epochs + 1) + 271, 500 * epochs + 271
    assert work.trainings == [images] * 3 and work.evaluated == [reference] + [arm] * 2
    assert not work.generated and not work.lora_steps
    parts = estimate(work, _rates(generate=0.0, lora=0.0), 2)
    first, per = (images + reference * FORWARD_SHARE) / 100, (images + arm * FORWARD_SHARE) / 100
    assert parts == pytest.approx({"classifier trainings": first + per, "total": first + per})  # then 1 and 2
    other = load_study("demo", {}, ["arms=[{name: baseline}]", "synthesis.compare_plan=null",
                                         "synthesis.sweep={}", "synthesis.reference={epochs: 1}"])
    assert len(study_workload(other, 1729, 500, 271).trainings) == 4  # the runner trains a reference regardless


def test_the_demo_workload_shares_the_reference_and_counts_img2img_and_the_sweep_by_steps():
    work = study_workload(load_study("demo"), 1729, 500, 271)
    assert len(work.trainings) == 16  # 5 arms x 3 seeds and the judge; the reference is baseline seed 0
    explicit = load_study("demo").classifier | {"grad_clip": 1.0}  # a default, spelled out
    spelled_out = load_study("demo", {}, [f"synthesis.reference={explicit}"])
    assert len(study_workload(spelled_out, 1729, 500, 271).trainings) == 16  # same resolved settings, same key
    assert work.lora_steps == 600 and work.lora_grid_images == 8 * 6
    a, b = round(1729 * 5 / 95), round(1729 * 10 / 90)
    assert work.generated == {"A/img2img": (a, 10), "A/lora": (a, 20), "A/vanilla": (a, 20), "B/img2img": (b, 10),
                              "B/lora": (b, 20), "A/img2img@0.3": (a, 6), "A/img2img@0.7": (a, 14),  # 0.5: reused
                              "A/oracle": (a, 0), "A/replay": (a, 0), "B/oracle": (b, 0), "B/replay": (b, 0),
                              "A/copy": (a, 0), "A/roundtrip": (a, 0)}  # Table 6's nulls beside img2img: no steps


def test_the_paper_preset_generates_table_5s_dataset_sizes_whatever_the_catalogue():
    for originals in (5068, 1000):  # a plan's `total` overrides the preset's share of the training originals
        work = study_workload(load_study("paper"), originals, 300, 200, train_rows=5 * originals)
        assert work.generated == {"A/lora": (570, 20), "B/lora": (2500, 20), "B/vanilla": (2500, 20)}
        # 50 epochs over the augmented rows, grown by 1 / (1 - 0.10) for every arm (on_top: B's synthetic on top)
        assert work.trainings[0] == 50 * 64 * -(-round(5 * originals / 0.9) // 64)
    demo_a = study_workload(load_study("demo"), 5068, 300, 200).generated["A/lora"][0]
    assert demo_a == round(5068 * 5 / 95) == 267  # the demo keeps the preset ratio


def test_the_cli_reads_the_benchmarks_json_and_says_where_they_measured_other_settings(tmp_path, capsys):
    base = ["bench", "train", "--image-size", "32", "--batch-size", "8", "--steps", "2", "--source-size", "40",
            "--threads", "1", "--data", str(tmp_path / "data"), "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    assert main([*base, "--json", str(tmp_path / "train.json")]) == 0
    measured = json.loads((tmp_path / "train.json").read_text())
    (tmp_path / "lora.json").write_text(json.dumps({"celadon": {"steps_per_s": 2.0},
                                                    "settings": {"batch_size": 16, "rank": 8,
                                                                 "train_text_encoder": True}}))
    (tmp_path / "generate.json").write_text(json.dumps({"celadon": {"images_per_s": 0.5},
                                                        "settings": {"steps": 20, "resolution": 0}}))
    capsys.readouterr()
    args = ["bench", "estimate", "demo", "--images", "1729,500,271", "--train", str(tmp_path / "train.json"),
            "--lora", str(tmp_path / "lora.json"), "--generate", str(tmp_path / "generate.json"), "--gpus", "1,8",
            "--quiet"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "note: bench train measured image_size 32; the study's classifier uses 64" in out
    assert "note: bench lora measured rank 8; the study's LoRA uses 16" in out
    assert "train_text_encoder" not in out and "lora measured batch_size" not in out  # the demo's, as measured
    assert "note: bench train measured batch_size 8; the study's classifier uses 64" in out
    assert "note: bench train measured train_depthwise True; the study's classifier uses False" in out
    assert "note: bench train augmented on the loader; the study's classifier on the device" in out
    assert "bench generate measured" not in out  # 0: the model's own resolution, which the demo uses
    work = study_workload(load_study("demo"), 1729, 500, 271)
    expected = estimate(work, Rates(measured["cached_images_per_s"], 2.0, 0.5, 20), 8)
    total = next(line for line in out.splitlines() if line.startswith("total")).split()
    assert float(total[-2]) == pytest.approx(expected["total"] / (60 if total[-1] == "min" else 3600), abs=0.05)

    missing = [*args[:6], str(tmp_path / "nope.json"), *args[7:]]
    assert main(missing) == 2
    assert "nope.json: no such file; write it with `celadon bench train --json" in capsys.readouterr().err
    (tmp_path / "broken.json").write_text("{}")
    assert main([*args[:6], str(tmp_path / "broken.json"), *args[7:]]) == 2
    assert "no cached_images_per_s" in capsys.readouterr().err
    assert main([*args[:-2], "0", "--quiet"]) == 2
    assert "--gpus 0: give at least 1" in capsys.readouterr().err


def test_a_missing_rate_the_study_needs_is_a_one_line_error():
    work = study_workload(load_study("demo"), 1729, 500, 271)
    with pytest.raises(CeladonError, match="bench lora --json"):
        estimate(work, _rates(lora=0.0), 1)


def test_the_confirmatory_preset_is_fresh_large_and_controlled_and_priced_from_its_plan():
    from celadon.experiment.config import resolve_config_path

    config = load_study("confirm")
    text = resolve_config_path("confirm").read_text(encoding="utf-8")
    assert "NO SETTING HERE MAY BE TUNED ON ITS RESULTS" in text
    assert len(config.seeds) >= 10 and config.synthesis.replicates >= 2
    assert config.embedded["seed"] != load_study("demo").embedded["seed"]
    assert config.split["seed"] != load_study("demo").split["seed"]
    generators = {arm.generator for arm in config.arms if arm.plan}
    assert {"lora", "oracle", "replay"} <= generators and config.arms[0].plan is None
    work = study_workload(config, 1729, 500, 271)
    assert len(work.trainings) == 5 * 10 + 1  # 5 arms x 10 seeds and the judge; the reference is baseline seed 0
    assert work.lora_steps == 2 * 600  # one LoRA per replicate
    b = round(1729 * 10 / 90)
    assert work.generated["B/lora"] == work.generated["B/lora#1"] == (b, 20)
    assert work.generated["B/oracle#1"] == (b, 0)  # a control draws no denoising step

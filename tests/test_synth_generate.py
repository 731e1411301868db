"""Generation plans (rare combinations, confusion pairs, presets), generation wiring, kill-safe resume,
shards, and the vanilla-vs-LoRA comparison table."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from celadon.data.manifest import read_manifest
from celadon.errors import CeladonError
from celadon.synth.generate import GenerateConfig, generate, prepare_generator_pipeline
from celadon.synth.lora import LoraConfig, train_lora
from celadon.synth.plan import PlanConfig, make_plan
from celadon.synth.qc import compare_qc
from celadon.taxonomy import load_taxonomy
from conftest import write_manifest_csv

COMBOS = {  # (dynasty, kiln, glaze, type): training originals
    ("song", "longquan", "celadon", "vase"): 60,
    ("song", "ding", "white", "bowl"): 16,
    ("song", "ding", "ivory_white", "bowl"): 4,
    ("yuan", "jun", "moon_white", "vase"): 1,
    ("song", "jian", "black", "teabowl"): 9,
}


@pytest.fixture
def training_manifest(tmp_path, write_images):
    rows, n = [], 0
    for (dynasty, kiln, glaze, kind), count in COMBOS.items():
        for path in write_images(count, start=n, size=16):
            rows.append({"path": path, "dynasty": dynasty, "kiln": kiln, "glaze": glaze, "type": kind})
        n += count
    rows.append({"path": write_images(1, start=n, size=16)[0], "glaze": "brown", "type": "jar"})  # kiln unknown
    path = write_manifest_csv(tmp_path / "manifest.csv", rows)
    return read_manifest(path, load_taxonomy())


def test_plan_spends_the_budget_on_rare_combinations_rarest_first(training_manifest):
    plan = make_plan(training_manifest, PlanConfig(total=40, rare_max=10))
    assert len(plan) == 40 and plan["item_id"].is_unique
    per_combo = plan.groupby("glaze").size()
    assert set(per_combo.index) == {"moon_white", "ivory_white", "black"}  # rare (<= 10 originals) only
    assert per_combo["moon_white"] > per_combo["ivory_white"] > per_combo["black"]  # 1/sqrt(n): 1, 4, 9
    assert (per_combo / per_combo.sum()).round(2).to_dict() == pytest.approx(
        {"moon_white": 1 / (1 + 1 / 2 + 1 / 3), "ivory_white": 0.5 / (1 + 1 / 2 + 1 / 3),
         "black": (1 / 3) / (1 + 1 / 2 + 1 / 3)}, abs=0.02)
    first = plan.iloc[0]
    assert first["prompt"].startswith(f"{first['dynasty'].capitalize()} dynasty")
    assert first["negative_prompt"] == "low quality, blurry, modern, damaged, cracked"
    assert plan["seed"].is_unique  # every item its own seed
    again = make_plan(training_manifest, PlanConfig(total=40, rare_max=10))
    assert again.equals(plan)  # deterministic


def test_plan_confusion_pairs_presets_and_caps(training_manifest):
    plan = make_plan(training_manifest, PlanConfig(total=20, pairs=(("white", "ivory_white"),), confusion_share=0.5))
    confusion = plan[plan["purpose"] == "confusion"]
    assert len(confusion) == 10 and set(confusion["glaze"]) == {"white", "ivory_white"}
    assert (confusion["reason"] == "confusion pair white vs ivory_white").all()
    originals = len(training_manifest)
    assert len(make_plan(training_manifest, PlanConfig(preset="A"))) == round(originals * 5 / 95)
    assert len(make_plan(training_manifest, PlanConfig(preset="B"))) == round(originals * 10 / 90)
    capped = make_plan(training_manifest, PlanConfig(total=40, rare_max=10, max_per_combination=5))
    assert capped.groupby("glaze").size().max() <= 5
    existing = {tuple(k) for k in training_manifest.frame[["dynasty", "kiln", "glaze", "type"]].dropna().values}
    assert {tuple(k) for k in plan[["dynasty", "kiln", "glaze", "type"]].values} <= existing  # nothing invented


@pytest.fixture(scope="module")
def small_plan(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plan")
    rows = [{"item_id": f"i{i:05d}", "dynasty": "song", "kiln": "ding", "glaze": glaze, "type": "bowl",
             "prompt": f"Song dynasty, Ding kiln produced, Chinese porcelain, bowl, with {glaze} glaze",
             "negative_prompt": "low quality, blurry", "seed": 1000 + i}
            for i, glaze in enumerate(["white", "ivory_white", "black", "celadon", "white", "brown"])]
    pd.DataFrame(rows).to_csv(folder / "plan.csv", index=False)
    return folder / "plan.csv"


@pytest.fixture(scope="module")
def small_lora(tiny_sd, caption_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora")
    return train_lora(LoraConfig(data=str(caption_folder), out=str(out), model=str(tiny_sd), steps=2, batch_size=2,
                                 rank=4, alpha=4.0, learning_rate=1e-2, threads=1), progress=False)


def _gen_config(tiny_sd, plan, out, **overrides) -> GenerateConfig:
    return GenerateConfig(**{**dict(plan=str(plan), out=str(out), model=str(tiny_sd), steps=2, batch_size=4,
                                    threads=1), **overrides})


def test_pipeline_receives_the_papers_sampler_and_knobs(tiny_sd, small_plan, small_lora, tmp_path, monkeypatch):
    from diffusers import StableDiffusionPipeline

    calls = []
    original = StableDiffusionPipeline.__call__

    def spy(self, *args, **kwargs):
        calls.append({**kwargs, "scheduler": self.scheduler})
        return original(self, *args, **kwargs)

    monkeypatch.setattr(StableDiffusionPipeline, "__call__", spy)
    generate(_gen_config(tiny_sd, small_plan, tmp_path / "g", lora=str(small_lora), clip_skip=1, guidance=7.0,
                         steps=3), progress=False)
    assert len(calls) == 2  # 6 items in batches of 4
    call = calls[0]
    assert call["clip_skip"] == 1 and call["guidance_scale"] == 7.0 and call["num_inference_steps"] == 3
    assert call["negative_prompt"] == ["low quality, blurry"] * 4 and len(call["generator"]) == 4
    scheduler = call["scheduler"]
    assert type(scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert scheduler.config.use_karras_sigmas and scheduler.config.algorithm_type == "dpmsolver++"
    assert scheduler.config.solver_order == 2
    table = pd.read_csv(tmp_path / "g" / "generated.csv")
    assert table["lora_scale"].eq(0.4).all() and table["clip_skip"].eq(1).all()


def test_lora_scale_is_fused_into_the_weights(tiny_sd, small_plan, small_lora):
    from safetensors.torch import load_file

    base = prepare_generator_pipeline(_gen_config(tiny_sd, small_plan, "unused"))
    fused = prepare_generator_pipeline(_gen_config(tiny_sd, small_plan, "unused", lora=str(small_lora),
                                                   lora_scale=0.4))
    lora = load_file(small_lora / "pytorch_lora_weights.safetensors")
    stem = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    delta = lora[f"{stem}.lora.up.weight"] @ lora[f"{stem}.lora.down.weight"]  # alpha / rank = 1
    w_base = base.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q.weight
    w_fused = fused.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q.weight
    assert delta.abs().max() > 0
    assert np.allclose((w_fused - w_base).detach().numpy(), 0.4 * delta.numpy(), atol=1e-6)


@pytest.mark.slow
def test_generation_killed_and_restarted_finishes_the_plan_once(tiny_sd, small_plan, tmp_path):
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "celadon.cli", "synth", "generate", str(small_plan), "--out", str(out),
               "--model", str(tiny_sd), "--steps", "2", "--batch-size", "1", "--threads", "1", "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent / "src")})
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None and len(list((out / "items").glob("*.json"))) < 2:
        time.sleep(0.02)
    assert process.poll() is None, process.stderr.read().decode()
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = len(list((out / "items").glob("*.json")))
    assert 2 <= done_before < 6
    assert subprocess.run(command, capture_output=True).returncode == 0
    table = pd.read_csv(out / "generated.csv")
    assert table["item_id"].tolist() == [f"i{i:05d}" for i in range(6)]  # all, in plan order, once
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"i{i:05d}.png" for i in range(6)]
    straight = generate(_gen_config(tiny_sd, small_plan, tmp_path / "straight", steps=2, batch_size=4), progress=False)
    for path in pd.read_csv(straight)["path"]:  # per-item seeds: batching does not change an image
        a = np.asarray(Image.open(tmp_path / "straight" / path), dtype=int)
        b = np.asarray(Image.open(out / path), dtype=int)
        assert np.abs(a - b).max() <= 2


def test_shards_split_the_plan_and_meet_in_one_table(tiny_sd, small_plan, tmp_path):
    out = tmp_path / "sharded"
    for shard in ("0/2", "1/2"):
        table = generate(_gen_config(tiny_sd, small_plan, out, shard=shard), progress=False)
        metadata = [json.loads(p.read_text()) for p in (out / "items").glob("*.json")]
        assert len(metadata) == (3 if shard == "0/2" else 6)
    assert pd.read_csv(table)["item_id"].tolist() == [f"i{i:05d}" for i in range(6)]
    with pytest.raises(CeladonError, match="--shard"):
        generate(_gen_config(tiny_sd, small_plan, out, shard="2/2"), progress=False)
    with pytest.raises(CeladonError, match=r"other settings \(guidance\)"):
        generate(_gen_config(tiny_sd, small_plan, out, guidance=3.0), progress=False)


def test_compare_table_lists_each_run(tmp_path):
    for name, fid, fidelity in (("vanilla", 120.0, 0.4), ("lora", 40.0, 0.9)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "qc_summary.json").write_text(json.dumps({
            "n_images": 10, "pass_rate": fidelity, "label_fidelity": {"glaze": fidelity, "glaze+type": fidelity},
            "distances": {"features": "efficientnet_lite0", "fid": fid, "kid_mean": fid / 1000, "kid_std": 0.001},
            "distance_reference": {"split": "val", "images": 20}}))
    table = compare_qc({"vanilla": tmp_path / "vanilla", "lora": tmp_path / "lora"})
    assert list(table.columns) == ["vanilla", "lora"]
    assert table.loc["FID vs val photos (efficientnet_lite0)", "lora"] == 40.0
    assert table.loc["label fidelity glaze+type", "vanilla"] == 0.4
    with pytest.raises(CeladonError, match="no qc_summary.json"):
        compare_qc({"x": tmp_path})


def test_generation_uses_the_clip_skip_its_lora_was_trained_with(tmp_path):
    import json

    from celadon.synth.generate import GenerateConfig, _call_kwargs

    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "pytorch_lora_weights.safetensors").write_bytes(b"")
    (tmp_path / "lora" / "lora_config.json").write_text(json.dumps({"rank": 4, "clip_skip": 2}))
    assert _call_kwargs(GenerateConfig(model="tiny", lora=str(tmp_path)))["clip_skip"] == 2  # read back
    assert _call_kwargs(GenerateConfig(model="tiny", lora=str(tmp_path), clip_skip=1))["clip_skip"] == 1  # given
    (tmp_path / "lora" / "lora_config.json").unlink()  # a foreign LoRA: the model's own default
    assert _call_kwargs(GenerateConfig(model="tiny", lora=str(tmp_path)))["clip_skip"] == _call_kwargs(
        GenerateConfig(model="tiny"))["clip_skip"]

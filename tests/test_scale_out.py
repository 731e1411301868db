"""Scale-out on the CPU: data-parallel LoRA training in two processes (gloo) equals one process on the same global
batch; generation shards run concurrently and merge to exactly the plan."""

import os
import socket
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from celadon.errors import CeladonError
from celadon.synth.generate import GenerateConfig, generate
from celadon.synth.lora import LoraConfig, encode_for_training, prepare_pipeline, train_lora
from test_synth_generate import small_plan  # noqa: F401  (the module's fixture)

SRC = os.path.join(os.path.dirname(__file__), "..", "src")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _lora(folder) -> dict[str, torch.Tensor]:
    return load_file(folder / "pytorch_lora_weights.safetensors")


def _settings(tiny_sd, caption_folder, **changes) -> dict:
    return dict(data=str(caption_folder), model=str(tiny_sd), steps=3, batch_size=4, checkpoint_every=3,
                threads=1, rank=4, alpha=4.0, learning_rate=1e-3, train_text_encoder=True, device="cpu") | changes


def _launch_two(tiny_sd, caption_folder, out, **changes) -> subprocess.CompletedProcess:
    """`accelerate launch --multi_gpu --num_processes 2 -m celadon.cli synth train-lora …`, the README's command,
    on the CPU (two processes, gloo)."""
    settings = _settings(tiny_sd, caption_folder, batch_size=2, **changes)
    flags = [str(settings.pop("data")), "--out", str(out), "--quiet"]
    for key, value in settings.items():
        flag = f"--{key.replace('_', '-')}"
        flags += [flag] if value is True else [flag, str(value)]
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(_free_port())]
    return subprocess.run([*launch, "-m", "celadon.cli", "synth", "train-lora", *flags], capture_output=True, text=True,
                          env=env, timeout=600)


def test_training_encoder_path_equals_the_pipelines_prompt_encoding(tiny_sd):
    pipe = prepare_pipeline(LoraConfig(model=str(tiny_sd), rank=4, train_text_encoder=True, device="cpu"))
    texts = ["a celadon vase", "a black teabowl of the song dynasty"]
    for clip_skip in (None, 1):
        expected, _ = pipe.encode_prompt(texts, pipe.device, 1, False, clip_skip=clip_skip)
        with torch.no_grad():
            got = encode_for_training(pipe, pipe.text_encoder, texts, clip_skip)
        assert torch.allclose(got, expected, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("clip_skip", [0, 1])
def test_two_process_lora_equals_one_process_on_the_same_global_batch(tiny_sd, caption_folder, tmp_path, clip_skip):
    single = train_lora(LoraConfig(out=str(tmp_path / "one"), **_settings(tiny_sd, caption_folder,
                                                                          clip_skip=clip_skip)), progress=False)
    launched = _launch_two(tiny_sd, caption_folder, tmp_path / "two", clip_skip=clip_skip)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert launched.stdout.count("LoRA written to") == 1  # two processes, one report
    one, two = _lora(single), _lora(tmp_path / "two" / "lora")
    assert one.keys() == two.keys() and any(k.startswith("text_encoder") for k in one)
    moved = max(float(v.abs().max()) for k, v in one.items() if "lora_B" in k or "lora.up" in k)
    assert moved > 1e-4  # three steps did train (B starts at zero)
    worst = max(float((one[k] - two[k]).abs().max()) for k in one)
    assert worst < 1e-5, worst
    # and the tolerance means something: half the global batch (one process alone) trains other weights
    half = train_lora(LoraConfig(out=str(tmp_path / "half"), **_settings(tiny_sd, caption_folder, batch_size=2,
                                                                         clip_skip=clip_skip)), progress=False)
    assert max(float((one[k] - _lora(half)[k]).abs().max()) for k in one) > 100 * max(worst, 1e-7)


def test_concurrent_shards_finish_exactly_the_plan_and_keep_finished_items(tiny_sd, small_plan, tmp_path):  # noqa: F811
    base = dict(plan=str(small_plan), model=str(tiny_sd), steps=2, batch_size=1, threads=1)
    out = tmp_path / "two"
    generate(GenerateConfig(out=str(out), shard="1/2", **base), progress=False)  # a shard an earlier run finished
    earlier = {p.name: p.stat().st_mtime_ns for p in (out / "items").glob("*.json")}
    assert len(earlier) == 3
    table = generate(GenerateConfig(out=str(out), devices=("cpu", "cpu"), **base), progress=False)
    assert pd.read_csv(table)["item_id"].tolist() == [f"i{i:05d}" for i in range(6)]  # all, in order, once
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"i{i:05d}.png" for i in range(6)]
    assert {p.name: p.stat().st_mtime_ns for p in (out / "items").glob("*.json") if p.name in earlier} == earlier
    info = yaml.safe_load((out / "run.yaml").read_text())
    assert info["config"]["devices"] == ["cpu", "cpu"] and info["device"] == "cpu,cpu"
    single = generate(GenerateConfig(out=str(tmp_path / "one"), **base), progress=False)
    for path in pd.read_csv(single)["path"]:  # per-item seeds: the process that made an image does not matter
        a = np.asarray(Image.open(tmp_path / "one" / path), dtype=int)
        assert np.abs(a - np.asarray(Image.open(out / path), dtype=int)).max() <= 2
    with pytest.raises(CeladonError, match="give one of them"):
        generate(GenerateConfig(out=str(out), devices=("cpu", "cpu"), **base | {"shard": "0/2"}), progress=False)
    with pytest.raises(CeladonError, match="cuda:99"):
        generate(GenerateConfig(out=str(out), devices=("cpu", "cuda:99"), **base), progress=False)


def test_sd15_random_has_sd15s_size_and_loads_only_for_benchmarks(tmp_path, capsys):
    from celadon.cli import main
    from celadon.synth.pipeline import benchmarking, random_sd15_pipeline, resolve_profile

    pipe = random_sd15_pipeline(device="meta")  # shapes only: no 4 GB of memory
    sizes = {name: sum(p.numel() for p in getattr(pipe, name).parameters()) for name in ("unet", "vae", "text_encoder")}
    assert sizes == {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}  # SD 1.5's
    with benchmarking():
        assert resolve_profile("sd15-random").resolution == 512
    with pytest.raises(CeladonError, match="random weights.*bench"):
        resolve_profile("sd15-random")
    plan = tmp_path / "plan.csv"
    pd.DataFrame([{"item_id": "i0", "prompt": "a bowl", "negative_prompt": "", "seed": 1}]).to_csv(plan, index=False)
    assert main(["synth", "generate", str(plan), "--out", str(tmp_path / "g"), "--model", "sd15-random"]) == 2
    assert "for `celadon bench lora`" in capsys.readouterr().err
    assert not (tmp_path / "g" / "images").exists()

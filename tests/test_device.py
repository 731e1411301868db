"""The device rule (auto picks the CPU without a GPU; a missing GPU is a one-line error) and the GPU input path
(whole batches gathered, warped and jittered on the device), exercised on the CPU."""

import json
import math

import numpy as np
import pytest
import torch
import yaml

from celadon.classify.data import ImageCache, prepare_samples
from celadon.classify.device_batches import DeviceBatches, warp_batch, warp_parameters
from celadon.classify.train import train
from celadon.cli import main
from celadon.data.manifest import read_manifest
from celadon.device import resolve_device
from celadon.errors import CeladonError
from celadon.taxonomy import load_taxonomy
from conftest import tiny_config


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_auto_takes_the_cpu_without_a_gpu_and_a_named_gpu_is_refused(no_gpu):
    assert resolve_device("auto") == resolve_device(None) == "cpu"
    assert resolve_device("CPU") == "cpu"
    for asked in ("cuda", "cuda:0"):
        with pytest.raises(CeladonError, match="no CUDA GPU.*--device cpu"):
            resolve_device(asked)
    for wrong in ("gpu", "cuda:x", "mps:0"):
        with pytest.raises(CeladonError, match="expected auto, cpu, cuda or cuda:N"):
            resolve_device(wrong)


def test_a_gpu_index_beyond_the_machine_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == "cuda" and resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(CeladonError, match="has 2 GPU.*cuda:0 to cuda:1"):
        resolve_device("cuda:2")


def test_commands_refuse_a_missing_gpu_in_one_line_before_any_work(no_gpu, tiny_splits, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", str(tiny_splits), "--out", str(out), "--device", "cuda", "--quiet"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "no CUDA GPU" in error
    assert not (out / "run.yaml").exists()
    assert main(["predict", str(out), str(tiny_splits), "--device", "cuda:1"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_identity_warp_returns_the_image_and_flip_mirrors_it():
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    identity = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(2, 2, 3)
    assert torch.allclose(warp_batch(images, 8, identity), images.float(), atol=1e-3)
    mirror = torch.tensor([[-1.0, 0, 0], [0, 1.0, 0]]).expand(2, 2, 3)
    assert torch.allclose(warp_batch(images, 8, mirror), images.flip(3).float(), atol=1e-3)


def test_warp_parameters_follow_the_cpu_transforms_ranges():
    theta = warp_parameters(4000, torch.Generator().manual_seed(0))
    linear = theta[:, :, :2]
    # |det| = crop width x height (fractions of the photo) = the crop's area, at most the full photo
    area = linear.det().abs()
    assert area.min() >= 0.8 - 1e-5 and area.max() <= 1 + 1e-5 and area.std() > 0.05
    flipped = (linear.det() < 0).float().mean()
    assert abs(flipped - 0.5) < 0.03  # RandomHorizontalFlip(0.5)
    # rotation: the angle between the warped x axis and the original stays within 15 degrees
    column = linear[:, :, 0] * torch.sign(linear.det()).unsqueeze(1)
    angles = torch.atan2(column[:, 1], column[:, 0]).abs().rad2deg()
    assert angles.max() <= 15 + 5  # up to 15 plus the crop's own aspect skew
    assert torch.equal(theta, warp_parameters(4000, torch.Generator().manual_seed(0)))  # seeded
    assert not torch.equal(theta, warp_parameters(4000, torch.Generator().manual_seed(1)))


def test_device_batches_gather_the_drawn_rows_with_their_targets(tiny_splits, tmp_path):
    taxonomy = load_taxonomy()
    manifest = read_manifest(tiny_splits, taxonomy)
    cache = ImageCache(tmp_path / "cache", 36)
    samples = prepare_samples(manifest, taxonomy.task_names, cache, progress=False)
    draws = [5, 0, 5, 17, 3, 9, 2]
    batches = list(DeviceBatches(cache.array(), samples, draws, 3, 32, "cpu", seed=4))
    assert [len(t) for _, t in batches] == [3, 3, 1]
    assert np.array_equal(torch.cat([t for _, t in batches]).numpy(), samples.targets[draws])
    images = batches[0][0]
    assert images.shape == (3, 3, 32, 32) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 255.01 and images.std() > 1  # real pixels, not zeros
    again = list(DeviceBatches(cache.array(), samples, draws, 3, 32, "cpu", seed=4))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again, strict=True))


def test_training_through_the_device_path_matches_the_loader_budget(tiny_splits, tmp_path):
    loader = train(tiny_config(tiny_splits, tmp_path / "loader", epochs=2), progress=False)
    device = train(tiny_config(tiny_splits, tmp_path / "device", epochs=2, augment_on="device"), progress=False)
    assert device["budget"] == loader["budget"]
    losses = [row["loss"] for row in device["history"]]
    assert all(math.isfinite(v) and v > 0 for v in losses)
    assert {"loss_glaze", "val_mean_f1_macro"} <= set(device["history"][0])
    info = yaml.safe_load((tmp_path / "device" / "run.yaml").read_text())
    assert info["device"] == "cpu" and info["config"]["augment_on"] == "device"
    with pytest.raises(CeladonError, match="augment_on"):
        train(tiny_config(tiny_splits, tmp_path / "bad", augment_on="gpu"), progress=False)


def test_a_study_on_a_missing_gpu_stops_before_its_first_stage(no_gpu, tmp_path, capsys):
    for flags in (["--device", "cuda"], ["--device", "cpu", "--gpus", "2"]):
        assert main(["run", "demo", "--out", str(tmp_path / "study"), *flags, "--quiet"]) == 2
        assert "no CUDA GPU" in capsys.readouterr().err
        assert not (tmp_path / "study" / "stages").exists()


def test_run_records_name_every_device_of_a_sharded_run(monkeypatch):
    from celadon.runinfo import describe_device

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: f"GPU {index}")
    assert describe_device("cpu") == "cpu" and describe_device("cpu,cpu") == "cpu,cpu"
    assert describe_device("cuda") == "cuda:0 (GPU 0)"
    assert describe_device("cuda:0,cuda:1") == "cuda:0 (GPU 0),cuda:1 (GPU 1)"


def test_bench_train_times_the_path_it_names_on_the_cpu(tmp_path, capsys):
    base = ["bench", "train", "--image-size", "32", "--batch-size", "8", "--steps", "2", "--source-size", "40",
            "--threads", "1", "--data", str(tmp_path / "data"), "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    for path in ("loader", "device"):
        assert main([*base, "--augment-on", path]) == 0
        out = capsys.readouterr().out
        result = json.loads(out[:out.rindex("}") + 1])
        assert result["augmented_on"] == path and result["device"] == "cpu"
        assert result["cached_images_per_s"] > 0 and result["compute_images_per_s"] > 0
        assert "ratios: cached/compute" in out

"""The classifier: loss masking, task weights, mixing ratio, resume after SIGKILL, early stopping, CLI."""

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
import torch

from celadon.checkpoint import load_checkpoint, load_tensors
from celadon.classify.data import MISSING, ImageCache
from celadon.classify.loss import multitask_loss
from celadon.classify.mixing import epoch_draws
from celadon.classify.models import ModelConfig, MultiTaskNet
from celadon.classify.train import TrainConfig, Trainer, train
from celadon.cli import main
from celadon.data.sampling import make_sampler
from celadon.errors import CeladonError
from celadon.taxonomy import load_taxonomy
from conftest import noise_image, tiny_config


def test_missing_labels_are_masked_and_tasks_weighted():
    torch.manual_seed(0)
    logits = {"glaze": torch.randn(4, 3, requires_grad=True), "type": torch.randn(4, 2, requires_grad=True)}
    targets = torch.tensor([[0, 1], [MISSING, 0], [2, MISSING], [1, MISSING]])
    class_weights = {"glaze": torch.tensor([1.0, 2.0, 0.5]), "type": torch.tensor([1.0, 3.0])}
    total, parts = multitask_loss(logits, targets, ["glaze", "type"], class_weights, {"glaze": 2.0, "type": 1.5})
    log_p = {t: torch.log_softmax(v.detach(), -1) for t, v in logits.items()}
    glaze = -(1.0 * log_p["glaze"][0, 0] + 0.5 * log_p["glaze"][2, 2] + 2.0 * log_p["glaze"][3, 1]) / 3
    kind = -(3.0 * log_p["type"][0, 1] + 1.0 * log_p["type"][1, 0]) / 2
    assert parts["glaze"] == pytest.approx(float(glaze), rel=1e-5)
    assert parts["type"] == pytest.approx(float(kind), rel=1e-5)
    assert float(total.detach()) == pytest.approx(float(2.0 * glaze + 1.5 * kind), rel=1e-5)
    total.backward()
    assert torch.all(logits["glaze"].grad[1] == 0) and torch.all(logits["type"].grad[2:] == 0)
    # A batch without any label of a task adds nothing for it.
    _, parts = multitask_loss(logits, torch.tensor([[0, MISSING]] * 4), ["glaze", "type"], class_weights, {})
    assert "type" not in parts


def test_mixing_draws_exactly_the_ratio_and_real_rows_by_their_weights():
    real = np.zeros(500)
    real[:100] = 1.0  # only the first 100 real rows may be drawn
    draws = np.array(epoch_draws(real, n_synthetic=40, ratio=0.10, draws=64 * 300, seed=5))
    synthetic = draws >= 500
    assert synthetic.sum() == round(64 * 300 * 0.10)  # exact, not an expected share
    assert set(draws[synthetic]) == set(range(500, 540))  # every synthetic row, and nothing beyond them
    assert draws[~synthetic].max() < 100
    batches = synthetic.reshape(300, 64).mean(axis=1)
    assert batches.std() < 0.06  # shuffled together: every batch is near the ratio, not just the epoch
    assert epoch_draws(real, 40, 0.10, 640, seed=5) == epoch_draws(real, 40, 0.10, 640, seed=5)
    assert epoch_draws(real, 0, 0.10, 640, seed=5) == list(make_sampler(real, 640, seed=5))  # real only: unchanged


def test_trainer_mixes_filtered_synthetic_rows_with_task_mask(tiny_splits, tmp_path):
    rows = []
    for i in range(6):
        noise_image(100 + i, 40).save(tmp_path / f"syn{i}.jpg")
        rows.append({"path": f"syn{i}.jpg", "dynasty": "song", "kiln": "ru", "glaze": "celadon", "type": "vase",
                     "qc_pass": "false" if i == 0 else "true", "review": "rejected" if i == 1 else ""})
    pd.DataFrame(rows).to_csv(tmp_path / "synthetic.csv", index=False)
    trainer = Trainer(tiny_config(tiny_splits, tmp_path / "run", synthetic=str(tmp_path / "synthetic.csv"),
                                  synthetic_ratio=0.25, synthetic_tasks=["type", "dynasty"], mixing="replace"),
                      progress=False)
    synthetic = trainer.samples.synthetic
    assert synthetic.sum() == 4  # failed QC and rejected in review are left out
    glaze = trainer.tasks.index("glaze")
    assert np.all(trainer.samples.targets[synthetic, glaze] == MISSING)
    assert np.all(trainer.samples.targets[synthetic, trainer.tasks.index("type")] >= 0)
    n_real = int((~synthetic).sum())
    assert trainer.epoch_size == n_real  # replace mixing: the same epoch, and so steps, as real-only training
    real_only = Trainer(tiny_config(tiny_splits, tmp_path / "real"), progress=False)
    assert trainer.steps_per_epoch == real_only.steps_per_epoch
    for task in trainer.tasks:  # class weights come from the real training rows alone, as in the baseline
        assert torch.equal(trainer.class_weights[task], real_only.class_weights[task])
    paper = Trainer(tiny_config(tiny_splits, tmp_path / "add", synthetic=str(tmp_path / "synthetic.csv"),
                                synthetic_ratio=0.25, mixing="add"), progress=False)
    assert paper.epoch_size == round(n_real / 0.75)


def test_replace_mixing_trains_every_arm_the_same_steps_and_records_presentations(tiny_splits, tmp_path):
    rows = []
    for i in range(4):
        noise_image(200 + i, 40).save(tmp_path / f"syn{i}.jpg")
        rows.append({"path": f"syn{i}.jpg", "dynasty": "song", "kiln": "ru", "glaze": "celadon", "type": "vase"})
    pd.DataFrame(rows).to_csv(tmp_path / "synthetic.csv", index=False)
    common = {"epochs": 2, "max_steps_per_epoch": 0, "patience": 5}
    baseline = train(tiny_config(tiny_splits, tmp_path / "base", mixing="replace", **common), progress=False)["budget"]
    mixed = train(tiny_config(tiny_splits, tmp_path / "mixed", synthetic=str(tmp_path / "synthetic.csv"),
                              synthetic_ratio=0.25, mixing="replace", **common), progress=False)["budget"]
    added = train(tiny_config(tiny_splits, tmp_path / "added", synthetic=str(tmp_path / "synthetic.csv"),
                              synthetic_ratio=0.25, mixing="add", **common), progress=False)["budget"]
    assert mixed["optimizer_steps"] == baseline["optimizer_steps"] > 0
    drawn = baseline["real_presentations"]
    assert baseline["synthetic_presentations"] == 0
    assert mixed["real_presentations"] + mixed["synthetic_presentations"] == drawn
    assert mixed["synthetic_presentations"] == 2 * round(drawn / 2 * 0.25)
    assert added["optimizer_steps"] > baseline["optimizer_steps"]  # the paper's protocol trains longer
    assert added["mixing"] == "add" and mixed["mixing"] == "replace"


def test_on_top_mixing_adds_synthetic_draws_keeps_every_real_one_and_equal_steps(tiny_splits, tmp_path):
    """The study's default: every arm (the baseline too) trains N / (1 - budget) draws per epoch; a mixed arm's
    synthetic draws come on top of N real ones, and each task's labelled presentations are counted."""
    from celadon.classify.mixing import epoch_size, synthetic_share

    rows = []
    for i in range(4):
        noise_image(300 + i, 40).save(tmp_path / f"syn{i}.jpg")
        rows.append({"path": f"syn{i}.jpg", "dynasty": "song", "kiln": "ru", "glaze": "celadon", "type": "vase"})
    pd.DataFrame(rows).to_csv(tmp_path / "synthetic.csv", index=False)
    common = {"epochs": 2, "max_steps_per_epoch": 0, "patience": 5, "budget_ratio": 0.2}
    synthetic = {"synthetic": str(tmp_path / "synthetic.csv")}
    baseline = train(tiny_config(tiny_splits, tmp_path / "base", **common), progress=False)["budget"]
    most = train(tiny_config(tiny_splits, tmp_path / "b", synthetic_ratio=0.2, **synthetic, **common),
                 progress=False)["budget"]
    less = train(tiny_config(tiny_splits, tmp_path / "a", synthetic_ratio=0.1, synthetic_tasks=["glaze", "type"],
                             **synthetic, **common), progress=False)["budget"]
    n_real = Trainer(tiny_config(tiny_splits, tmp_path / "count"), progress=False).n_real
    draws = -(-round(n_real / 0.8) // 8) * 8  # the epoch, N / (1 - 0.2), in whole batches of 8
    assert baseline["optimizer_steps"] == most["optimizer_steps"] == less["optimizer_steps"] == 2 * draws // 8
    assert baseline["synthetic_presentations"] == 0 and baseline["real_presentations"] == 2 * draws
    assert most["synthetic_presentations"] == 2 * round(draws * synthetic_share("on_top", 0.2, 0.2)) > 0
    assert less["synthetic_presentations"] == 2 * round(draws * 0.8 * 0.1 / 0.9) > 0  # N x 0.1 / 0.9 on top
    assert min(most["real_presentations"], less["real_presentations"]) >= 2 * n_real  # no real epoch lost
    # labelled presentations per task: synthetic images add glaze and type labels, and none of kiln's
    assert less["labels_glaze"] == less["labels_type"] == 2 * draws == baseline["labels_glaze"]
    assert less["labels_kiln"] <= less["real_presentations"] < baseline["real_presentations"]
    assert epoch_size("on_top", 100, 0.0, 0.1, mixed=False) == epoch_size("on_top", 100, 0.1, 0.1, mixed=True) == 111
    assert epoch_size("add", 100, 0.1, 0.0, mixed=True) == 111 and epoch_size("add", 100, 0.1, 0.0, mixed=False) == 100


@pytest.mark.slow
def test_resume_after_sigkill_matches_an_uninterrupted_run(tiny_splits, tmp_path):
    config = tiny_config(tiny_splits, tmp_path / "straight", epochs=4, max_steps_per_epoch=6)
    train(config, progress=False)
    reference = load_tensors(tmp_path / "straight" / "checkpoints" / "epoch_004.model.safetensors")

    out = tmp_path / "killed"
    command = [sys.executable, "-m", "celadon.cli", "train", str(tiny_splits), "--out", str(out), "--weights",
               "none", "--image-size", "32", "--batch-size", "8", "--epochs", "4", "--max-steps-per-epoch", "6",
               "--threads", "1", "--cache-dir", config.cache_dir, "--quiet"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    pointer = out / "checkpoints" / "latest.json"
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if pointer.exists() and json.loads(pointer.read_text())["epoch"] >= 2:
            break
        time.sleep(0.02)
    assert process.poll() is None, process.stderr.read().decode()
    process.send_signal(signal.SIGKILL)
    process.wait()
    epoch, _, _ = load_checkpoint(out / "checkpoints")
    assert 2 <= epoch < 4
    assert main(["train", str(tiny_splits), "--out", str(out), "--weights", "none", "--image-size", "32",
                 "--batch-size", "8", "--epochs", "4", "--max-steps-per-epoch", "6", "--threads", "1",
                 "--cache-dir", config.cache_dir, "--resume", "--quiet"]) == 0
    resumed = load_tensors(out / "checkpoints" / "epoch_004.model.safetensors")
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)
    history = pd.read_csv(out / "history.csv")
    assert history["epoch"].tolist() == [1, 2, 3, 4]  # nothing lost, nothing duplicated


def test_early_stopping_when_val_cannot_improve(tiny_splits, tmp_path):
    config = tiny_config(tiny_splits, tmp_path / "frozen", epochs=10, patience=2, lr_backbone=0.0, lr_heads=0.0)
    state = train(config, progress=False)
    assert [row["epoch"] for row in state["history"]] == [1, 2, 3]
    assert state["best_epoch"] == 1 and state["stale"] == 2


def test_existing_run_needs_resume(tiny_splits, tmp_path):
    config = tiny_config(tiny_splits, tmp_path / "once", epochs=1, max_steps_per_epoch=1)
    train(config, progress=False)
    from celadon.errors import CeladonError

    with pytest.raises(CeladonError, match="pass --resume"):
        train(config, progress=False)


def test_cache_decodes_each_content_once_and_survives_partial_writes(tmp_path):
    for i in range(3):
        noise_image(i, 50).save(tmp_path / f"{i}.png")
    (tmp_path / "copy.png").write_bytes((tmp_path / "0.png").read_bytes())
    cache = ImageCache(tmp_path / "cache", 16)
    rows = cache.rows_for([tmp_path / "0.png", tmp_path / "1.png", tmp_path / "copy.png"], progress=False)
    assert rows.tolist() == [0, 1, 0]
    with open(cache.pixels_path, "ab") as handle:  # a killed append: half a row of garbage
        handle.write(b"\x07" * 100)
    cache = ImageCache(tmp_path / "cache", 16)
    assert cache.rows_for([tmp_path / "2.png"], progress=False).tolist() == [2]
    array = cache.array()
    assert array.shape == (3, 16, 16, 3)
    assert not np.all(array[2] == 7)


def test_two_processes_appending_to_one_cache_keep_every_row_right(tmp_path):
    """Trainings running at once share the cache: two processes decoding different photos into it at the same
    moment leave an index whose every row holds that photo's pixels."""
    from celadon.data.images import load_image, resize_square

    sets = [[tmp_path / f"{who}{i}.png" for i in range(60)] for who in "ab"]
    for n, path in enumerate(sets[0] + sets[1]):
        noise_image(n, 40).save(path)
    go = tmp_path / "go"
    script = ("import sys, time, pathlib\nfrom celadon.classify.data import ImageCache\n"
              "cache = ImageCache(sys.argv[1], 16)\n"  # reads the (empty) index before the other one writes
              "pathlib.Path(sys.argv[2] + sys.argv[3]).touch()\n"
              "while not pathlib.Path(sys.argv[2]).exists(): time.sleep(0.005)\n"
              "cache.rows_for([pathlib.Path(p) for p in sys.argv[4:]], progress=False)\n")
    processes = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "cache"), str(go), who,
                                   *map(str, paths)], stderr=subprocess.PIPE)
                 for who, paths in zip("ab", sets, strict=True)]
    while not all(Path(f"{go}{who}").exists() for who in "ab"):  # both hold an index read before any append
        assert all(p.poll() is None for p in processes), [p.stderr.read() for p in processes]
        time.sleep(0.01)
    go.touch()
    assert [p.wait(timeout=120) for p in processes] == [0, 0], [p.stderr.read() for p in processes]
    cache = ImageCache(tmp_path / "cache", 16)
    paths = sets[0] + sets[1]
    rows = cache.rows_for(paths, progress=False)
    assert sorted(rows.tolist()) == list(range(120))  # nothing decoded twice, nothing missing
    pixels = cache.array()
    for path, row in zip(paths, rows, strict=True):
        assert np.array_equal(pixels[row], resize_square(load_image(path), 16)), path


def test_batch_colour_jitter():
    from celadon.classify.data import _LUMA, jitter_colours

    torch.manual_seed(0)
    batch = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    assert torch.allclose(jitter_colours(batch, 0, 0, 0, 0), batch.float())
    grey = torch.full((4, 3, 8, 8), 120, dtype=torch.uint8)
    assert torch.allclose(jitter_colours(grey, 0, 0, 0.5, 0.5), grey.float(), atol=1e-3)  # no colour to change
    # Hue rotation keeps luma; different samples get different factors; the same seed the same result.
    mid = torch.randint(60, 190, (6, 3, 8, 8), dtype=torch.uint8)
    rotated = jitter_colours(mid, 0, 0, 0, 0.1)
    assert torch.allclose((rotated * _LUMA).sum(1), (mid.float() * _LUMA).sum(1), atol=1e-3)
    assert not torch.allclose(rotated, mid.float())
    torch.manual_seed(1)
    first = jitter_colours(batch)
    torch.manual_seed(1)
    assert torch.equal(first, jitter_colours(batch))
    ratio = first.mean((1, 2, 3)) / batch.float().mean((1, 2, 3))
    assert ratio.std() > 0.01 and first.min() >= 0 and first.max() <= 255


def test_cache_notices_a_changed_file(tmp_path):
    noise_image(1, 40).save(tmp_path / "a.png")
    cache = ImageCache(tmp_path / "cache", 16)
    assert cache.rows_for([tmp_path / "a.png"], progress=False).tolist() == [0]
    noise_image(2, 40).save(tmp_path / "a.png")  # replaced in place: new size/mtime, new content
    os.utime(tmp_path / "a.png", ns=(1, 1))
    assert cache.rows_for([tmp_path / "a.png"], progress=False).tolist() == [1]
    assert not np.array_equal(cache.array()[0], cache.array()[1])


def test_sampler_choice():
    from celadon.classify.data import Samples
    from celadon.classify.train import sample_weights
    from celadon.data.manifest import Manifest
    from celadon.data.sampling import combination_sample_weights

    frame = pd.DataFrame({"path": list("abcde"), "dynasty": None, "kiln": None,
                          "glaze": ["white", "white", "white", "black", None], "type": ["bowl"] * 4 + ["vase"]})
    manifest = Manifest(frame.astype(object), Path("."), load_taxonomy())
    targets = np.array([[1, 0], [1, 0], [1, 0], [2, 0], [MISSING, 2]])
    samples = Samples(np.arange(5), targets, np.full(5, -1), np.zeros(5, bool), np.ones(targets.shape))
    glaze = sample_weights(manifest, samples, ["glaze", "type"], "auto")
    assert glaze.tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3, 1.0, 1.0])  # inverse glaze frequency
    hierarchical = sample_weights(manifest, samples, ["type"], "auto")  # no glaze task: 1/sqrt(n) combinations
    assert hierarchical.tolist() == pytest.approx(combination_sample_weights(manifest.combination_keys()).tolist())
    assert sample_weights(manifest, samples, ["type"], "none").tolist() == [1.0] * 5


def test_frozen_depthwise_kernels_stay_put_while_the_rest_trains(tiny_splits, tmp_path):
    trainer = Trainer(tiny_config(tiny_splits, tmp_path / "frozen", epochs=1, train_depthwise=False), progress=False)
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.fit()
    depthwise = {f"backbone.{name}.weight" for name, m in trainer.model.backbone.named_modules()
                 if isinstance(m, torch.nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels}
    assert len(depthwise) >= 10
    after = dict(trainer.model.named_parameters())
    assert all(torch.equal(before[name], after[name]) for name in depthwise)
    moved = [name for name in after if name not in depthwise and not torch.equal(before[name], after[name])]
    assert len(moved) > 0.9 * (len(after) - len(depthwise))  # pointwise convs, norms, heads: all trained


def test_frozen_stages_stay_put_and_leave_the_backward_graph(tiny_splits, tmp_path):
    trainer = Trainer(tiny_config(tiny_splits, tmp_path / "stages", epochs=1, freeze_stages=3), progress=False)
    model = trainer.model
    frozen = {id(p) for stage in model.stages[:3] for module in stage for p in module.parameters()}
    assert len(model.stages) == 8 and len(frozen) >= 10  # Lite0: stem + 7 blocks
    graph = []  # whether each stage's output is part of the autograd graph
    hooks = [stage[-1].register_forward_hook(lambda m, i, out: graph.append(out.requires_grad))
             for stage in model.stages]
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer.fit()
    for hook in hooks:
        hook.remove()
    assert graph[:8] == [False] * 3 + [True] * 5  # no backward through the frozen prefix at all
    after = dict(model.named_parameters())
    assert all(torch.equal(before[n], p) for n, p in after.items() if id(p) in frozen)
    moved = [n for n, p in after.items() if id(p) not in frozen and not torch.equal(before[n], p)]
    assert len(moved) > 0.9 * (len(after) - len(frozen))
    with pytest.raises(CeladonError, match="freeze_stages: 9 is outside 0..8"):
        model.freeze_stages(9)


@pytest.mark.parametrize("backbone", ["mobilenet_v3_large", "resnet50"])
def test_every_backbone_names_its_stages_in_forward_order(backbone):
    model = MultiTaskNet(ModelConfig(backbone, "none", {"glaze": 3}, False, 0.0))
    order = {id(m): i for i, m in enumerate(model.backbone.modules())}
    first = [order[id(stage[0])] for stage in model.stages]
    assert len(first) >= 5 and first == sorted(first)
    model.freeze_stages(2)
    grads = [[p.requires_grad for module in stage for p in module.parameters()] for stage in model.stages]
    assert not any(grads[0] + grads[1]) and all(sum(grads[2:], []))


def test_settings_added_later_enter_a_study_key_only_when_changed():
    plain = TrainConfig(splits="s.csv").key_settings()
    assert "train_depthwise" not in plain and "augment_on" not in plain and plain["epochs"] == 50
    assert "freeze_stages" not in plain
    changed = TrainConfig(splits="s.csv", train_depthwise=False, augment_on="device", freeze_stages=4).key_settings()
    assert changed["train_depthwise"] is False and changed["augment_on"] == "device"
    assert changed["freeze_stages"] == 4


@pytest.mark.slow
def test_default_threads_train_the_same_weights_with_a_core_busy_and_without(tiny_splits, tmp_path):
    """`threads: 0` once followed the machine's load, and a study started beside another job trained other
    weights; now it is the usable cores either way (a 2-core machine sees the difference)."""
    from celadon.cpu import usable_cores

    if usable_cores() < 2:
        pytest.skip("one core: every count is 1")
    idle = tiny_config(tiny_splits, tmp_path / "idle", threads=0, epochs=2)
    train(idle, progress=False)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        train(tiny_config(tiny_splits, tmp_path / "busy", threads=0, epochs=2), progress=False)
    finally:
        busy.kill()
        busy.wait()
    first = load_tensors(tmp_path / "idle" / "checkpoints" / "epoch_002.model.safetensors")
    second = load_tensors(tmp_path / "busy" / "checkpoints" / "epoch_002.model.safetensors")
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_real_and_synthetic_images_reach_the_network_through_one_resize(tmp_path):
    """A 64 px synthetic image and the 128 px real photo it was made from meet in the cache as the same pixels
    when both pass through the generators' 64 px (source_size); straight to the cache, the real one is
    sharper (downsampled) than the synthetic one (upsampled) - a cue only synthetic images carry."""
    from PIL import Image

    from celadon.data.images import load_image, resize_square

    real = noise_image(7, 128)
    real.save(tmp_path / "real.png")
    Image.fromarray(resize_square(real, 64)).save(tmp_path / "synthetic.png")
    paths = [tmp_path / "real.png", tmp_path / "synthetic.png"]
    one_path = ImageCache(tmp_path / "cache", 73, source_size=64)
    rows = one_path.rows_for(paths, progress=False)
    pixels = one_path.array()
    assert np.array_equal(pixels[rows[0]], pixels[rows[1]])
    straight = ImageCache(tmp_path / "cache", 73)
    rows = straight.rows_for(paths, progress=False)
    assert not np.array_equal(straight.array()[rows[0]], straight.array()[rows[1]])
    assert load_image(paths[1]).size == (64, 64)

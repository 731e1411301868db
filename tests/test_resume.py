"""Kill -9 at random moments, again and again: jobs finish exactly, with no temporary file left behind."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from celadon.runinfo import atomic_write_text

SRC = str(Path(__file__).parent.parent / "src")


def test_a_write_removes_the_temp_files_its_killed_predecessors_left_and_nothing_else(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a process id that is certainly gone
    stale = tmp_path / f".table.csv.{dead.pid}.x1.tmp"
    live = tmp_path / f".table.csv.{os.getpid()}.x2.tmp"  # a writer still running (this process)
    other = tmp_path / f".other.csv.{dead.pid}.x3.tmp"  # another file's: not this writer's to remove
    for path in (stale, live, other):
        path.write_text("partial")
    atomic_write_text(tmp_path / "table.csv", "a,b\n")
    assert not stale.exists() and live.exists() and other.exists()
    assert (tmp_path / "table.csv").read_text() == "a,b\n"


def test_a_checkpoint_removes_what_a_killed_write_of_an_older_checkpoint_left(tmp_path):
    import torch

    from celadon.checkpoint import load_checkpoint, save_checkpoint

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folder = tmp_path / "ckpt"
    folder.mkdir()
    stale = folder / f".epoch_001.model.safetensors.{dead.pid}.ab12.tmp"  # that file is never written again
    stale.write_bytes(b"partial")
    save_checkpoint(folder, 2, {"w": torch.ones(2)}, {"progress": {"best": 1.0}})
    assert not stale.exists()
    assert load_checkpoint(folder)[0] == 2


def _kill_loop(command: list[str], kills: int, seed: int) -> int:
    """Start `command`, SIGKILL it after a random moment, `kills` times (fewer if it finishes first), then let
    it finish; returns how many runs were killed."""
    rng = random.Random(seed)
    env = {**os.environ, "PYTHONPATH": SRC}
    for killed in range(kills):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        time.sleep(rng.uniform(4.0, 9.0))  # past start-up (imports), into the work
        if process.poll() is not None:
            assert process.returncode == 0, process.stderr.read().decode()
            return killed
        process.send_signal(signal.SIGKILL)
        process.wait()
    finished = subprocess.run(command, capture_output=True, env=env)
    assert finished.returncode == 0, finished.stderr.decode()
    return kills


def _temp_files(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name]


@pytest.mark.slow
def test_train_lora_killed_repeatedly_ends_with_one_log_row_per_checkpoint_and_no_temp_file(
        tiny_sd, caption_folder, tmp_path):
    out = tmp_path / "lora"
    command = [sys.executable, "-m", "celadon.cli", "synth", "train-lora", str(caption_folder), "--out", str(out),
               "--model", str(tiny_sd), "--steps", "12", "--batch-size", "2", "--rank", "4",
               "--checkpoint-every", "1", "--threads", "1", "--quiet"]
    assert _kill_loop(command, kills=3, seed=0) >= 1
    steps = pd.read_csv(out / "train_log.csv")["step"].tolist()
    assert steps == list(range(1, 13))  # every checkpoint once, none twice
    assert len(list((out / "samples").glob("step_*.png"))) == 12
    assert (out / "lora" / "pytorch_lora_weights.safetensors").exists()
    assert _temp_files(out) == []


@pytest.mark.slow
def test_generate_killed_repeatedly_finishes_the_plan_once_with_no_temp_file(tiny_sd, tmp_path):
    rows = [{"item_id": f"i{i:05d}", "dynasty": "song", "kiln": "ding", "glaze": glaze, "type": "bowl",
             "prompt": f"Song dynasty, Ding kiln produced, Chinese porcelain, bowl, with {glaze} glaze",
             "negative_prompt": "", "seed": 1000 + i}
            for i, glaze in enumerate(["white", "ivory_white", "black", "celadon", "white", "brown"] * 4)]
    pd.DataFrame(rows).to_csv(tmp_path / "plan.csv", index=False)
    out = tmp_path / "gen"
    command = [sys.executable, "-m", "celadon.cli", "synth", "generate", str(tmp_path / "plan.csv"), "--out",
               str(out), "--model", str(tiny_sd), "--steps", "4", "--batch-size", "1", "--threads", "1", "--quiet"]
    assert _kill_loop(command, kills=3, seed=1) >= 1
    table = pd.read_csv(out / "generated.csv")
    assert table["item_id"].tolist() == [r["item_id"] for r in rows]
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"{r['item_id']}.png" for r in rows]
    assert _temp_files(out) == []


def test_a_full_disk_is_a_one_line_error_naming_the_file_and_leaves_no_temp(tmp_path, monkeypatch):
    import errno

    import pytest

    from celadon.errors import CeladonError

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")  # as the kernel reports it: no file name

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(CeladonError) as caught:
        atomic_write_text(tmp_path / "generated.csv", "a,b\n")
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'generated.csv'}: cannot write (No space left on device)")
    assert "\n" not in message
    assert list(tmp_path.iterdir()) == []


def test_default_threads_are_the_usable_cores_whatever_the_load(capsys):
    """A thread count taken from the load made results depend on what else ran; the busy cores are only noted."""
    import celadon.cpu
    from celadon.cpu import free_cores, resolve_threads, usable_cores

    assert resolve_threads(3) == 3  # an explicit count is used as given
    cores = usable_cores()
    if cores < 2:
        pytest.skip("needs two cores to see one taken")
    assert resolve_threads(0) == cores
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        assert free_cores() <= cores - 1
        celadon.cpu._warned = False
        assert resolve_threads(0) == cores
        assert f"celadon still uses {cores} threads" in capsys.readouterr().err
    finally:
        busy.kill()
        busy.wait()

"""Shared fixtures: real image files of every awkward kind, written by the tests themselves."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("OMP_NUM_THREADS", "1")
# Caches (decoded pixels, image checks) of this test session stay in a temporary folder, not ~/.cache, and go
# when the session ends (left behind, one per run, they had filled this machine's disk)
TEST_CACHE = tempfile.mkdtemp(prefix="celadon-test-cache-")
os.environ["CELADON_CACHE"] = TEST_CACHE


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(TEST_CACHE, ignore_errors=True)


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true",
                     help="also run the tests marked slow (whole studies, kill loops, multi-process LoRA, Chromium); "
                          "CI runs them all")


def pytest_collection_modifyitems(config, items):
    """`pytest -q` runs the fast suite: the slow tests are deselected (not skipped) unless --slow is given."""
    if config.getoption("--slow"):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]


def noise_image(seed: int, size: int = 64) -> Image.Image:
    """A distinct, textured RGB image (distinct seeds are never near duplicates)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((size, size), Image.BICUBIC)


@pytest.fixture
def write_images(tmp_path: Path):
    """Write `n` distinct JPEGs under tmp_path/images and return their paths relative to tmp_path."""

    def write(n: int, start: int = 0, size: int = 64) -> list[str]:
        (tmp_path / "images").mkdir(exist_ok=True)
        paths = []
        for i in range(start, start + n):
            rel = f"images/img{i:04d}.jpg"
            noise_image(i, size).save(tmp_path / rel, quality=95)
            paths.append(rel)
        return paths

    return write


def write_manifest_csv(path: Path, rows: list[dict], header: str = "path,dynasty,kiln,glaze,type") -> Path:
    columns = header.split(",")
    lines = [header] + [",".join(str(row.get(c, "") or "") for c in columns) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> Path:
    """An SD-architecture pipeline built by `build_base` itself at toy size (every stage, a few steps)."""
    from celadon.synth.base import BaseConfig, build_base

    root = tmp_path_factory.mktemp("tiny_sd")
    return build_base(BaseConfig(work=str(root / "work"), out=str(root / "model"), images=96, vae_min_steps=2,
                                 vae_max_steps=2, decoder_steps=2, vae_batch=8, unet_steps=2, unet_batch=8,
                                 sample_every=2, threads=1))


@pytest.fixture(scope="session")
def caption_folder(tmp_path_factory) -> Path:
    """A LoRA training folder (metadata.jsonl + PNGs) of rendered vessels with structured captions."""
    import json

    from celadon.data.embedded.render import Labels, render
    from celadon.synth.captions import caption
    from celadon.taxonomy import load_taxonomy

    taxonomy = load_taxonomy()
    folder = tmp_path_factory.mktemp("captions")
    (folder / "images").mkdir()
    records = []
    for i, (glaze, kind) in enumerate([("celadon", "vase"), ("black", "teabowl"), ("white", "plate"),
                                       ("brown", "jar")] * 2):
        labels = {"dynasty": "song", "kiln": "longquan", "glaze": glaze, "type": kind}
        render(Labels(**labels), 64, np.random.default_rng(i)).save(folder / "images" / f"{i}.png")
        records.append({"file_name": f"images/{i}.png", "text": caption(labels, taxonomy), **labels})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


@pytest.fixture(scope="module")
def tiny_splits(tmp_path_factory) -> Path:
    """A 90-image render split for classifier tests (one per test module)."""
    from celadon.data.embedded import EmbeddedConfig, make_demo
    from celadon.data.split import SplitConfig, run_split
    from celadon.taxonomy import load_taxonomy

    root = tmp_path_factory.mktemp("tiny")
    manifest = make_demo(root / "data", EmbeddedConfig(n=90, size=40, seed=3, workers=1), progress=False)
    return run_split(manifest, load_taxonomy(), root / "split", SplitConfig(seed=0), progress=False).path


def tiny_config(splits: Path, out: Path, **changes):
    """A TrainConfig of a few tiny steps on `tiny_splits`, with `changes` on top."""
    from celadon.classify.train import TrainConfig

    values = dict(splits=str(splits), out=str(out), weights="none", image_size=32, batch_size=8, epochs=3,
                  max_steps_per_epoch=3, threads=1, cache_dir=str(out.parent / "cache"), log_tensorboard=False)
    values.update(changes)
    return TrainConfig(**values)

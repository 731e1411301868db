"""`celadon bench train`: training images/s of three input pipelines feeding the same model and batch.

1. compute limit: uint8 batches already in memory (normalise + forward + backward + step only);
2. celadon's cached path: decoded-once uint8 cache, augmented per image in the loader or per batch on the
   device (`--augment-on`, as `train`);
3. naive: an ImageFolder-style loop decoding every JPEG with PIL transforms each time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2
from tqdm import tqdm

from celadon.classify.data import (
    CachedDataset,
    ImageCache,
    cache_resolution,
    jitter_colours,
    normalise,
    prepare_samples,
    train_transform,
)
from celadon.classify.device_batches import DeviceBatches, augments_on_device
from celadon.classify.loss import multitask_loss
from celadon.classify.models import ModelConfig, MultiTaskNet
from celadon.classify.train import PAPER_TASK_WEIGHTS, set_threads
from celadon.data.embedded import EmbeddedConfig, make_demo
from celadon.data.manifest import read_manifest
from celadon.data.sampling import make_sampler
from celadon.device import autocast, on_gpu, resolve_device
from celadon.runinfo import describe_device, write_json
from celadon.taxonomy import load_taxonomy


@dataclass
class BenchConfig:
    backbone: str = "efficientnet_lite0"
    image_size: int = 128
    batch_size: int = 64
    steps: int = 12
    source_size: int = 1024  # museum photos are large; decoding them is what the cache saves
    threads: int = 0
    data: str = "runs/bench-data"
    cache_dir: str = "runs/bench-cache"
    workers: int = 0  # DataLoader workers for both input pipelines
    device: str = "auto"
    augment_on: str = "auto"  # the cached path's augmentation, as in training: auto (device on a GPU), loader, device
    train_depthwise: bool = True  # False: the depthwise kernels frozen, as TrainConfig.train_depthwise
    freeze_stages: int = 0  # the backbone's first N stages frozen, as TrainConfig.freeze_stages


class NaiveJpegDataset(Dataset):
    """What a first training script does: open, decode and transform the JPEG on every access."""

    def __init__(self, paths: list[Path], targets: np.ndarray, image_size: int, mean, std):
        self.paths, self.targets = paths, targets
        self.transform = v2.Compose([
            v2.RandomResizedCrop(image_size, scale=(0.8, 1.0)), v2.RandomHorizontalFlip(), v2.RandomRotation(15),
            v2.ColorJitter(0.2, 0.2, 0.2, 0.1), v2.RandomAffine(degrees=0, translate=(0.1, 0.1)),
            v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std),
        ])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        with Image.open(self.paths[index]) as img:
            return self.transform(img.convert("RGB")), torch.from_numpy(self.targets[index])


WARMUP = 2  # steps not timed: allocator and kernel warm-up


def _timed(model, optimizer, batches, tasks, class_weights, steps: int, prepare, device: str) -> float:
    """Images/s over `steps` training steps (data loading included) after WARMUP untimed steps; on a GPU the
    clock stops when the device has finished, not when the last kernel was queued."""
    iterator = iter(batches)
    count, start = 0, 0.0
    for step in range(steps + WARMUP):
        if step == WARMUP:
            _synchronise(device)
            start = time.perf_counter()
        images, targets = next(iterator)
        with autocast(device):
            logits = model(prepare(images.to(device, non_blocking=True)))
        loss, _ = multitask_loss(logits, targets.to(device), tasks, class_weights, PAPER_TASK_WEIGHTS)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= WARMUP:
            count += len(images)
    _synchronise(device)
    return count / (time.perf_counter() - start)


def _synchronise(device: str) -> None:
    if on_gpu(device):
        torch.cuda.synchronize(device)


def bench_train(config: BenchConfig, progress: bool = True) -> dict:
    threads = set_threads(config.threads)
    device = resolve_device(config.device)
    on_device = augments_on_device(config.augment_on, device)  # an unknown value fails before any work
    # A fixed set of photos (batches are drawn from it with replacement), so other settings reuse it.
    manifest_path = make_demo(config.data, EmbeddedConfig(n=640, size=config.source_size, seed=7), progress=progress)
    taxonomy = load_taxonomy()
    manifest = read_manifest(manifest_path, taxonomy)
    tasks = taxonomy.task_names
    model = MultiTaskNet(ModelConfig(config.backbone, "none", {t: len(taxonomy.task(t).codes) for t in tasks}))
    model = model.to(device, memory_format=torch.channels_last).train()
    if not config.train_depthwise:
        model.freeze_depthwise()
    model.freeze_stages(config.freeze_stages)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    class_weights = {t: torch.ones(len(taxonomy.task(t).codes), device=device) for t in tasks}
    cache = ImageCache(config.cache_dir, cache_resolution(config.image_size))
    samples = prepare_samples(manifest, tasks, cache, progress=progress)  # one-time decode, not timed
    sampler_size = (config.steps + WARMUP) * config.batch_size
    from celadon.cpu import usable_cores

    results = {"threads": threads, "usable_cores": usable_cores()}  # threads 0 -> the cores others leave free
    generator = torch.Generator().manual_seed(0)
    fixed = torch.randint(0, 256, (config.batch_size, 3, config.image_size, config.image_size),
                          dtype=torch.uint8, generator=generator).to(device)  # resident: no copy is timed
    in_memory = [(fixed, torch.from_numpy(samples.targets[: config.batch_size]))] * (config.steps + WARMUP)

    def compute_limit() -> float:
        return _timed(model, optimizer, in_memory, tasks, class_weights, config.steps,
                      lambda x: normalise(x, model.mean, model.std), device)

    with tqdm(total=4, desc="benchmarking", disable=not progress, leave=False) as bar:
        first_compute = compute_limit()
        bar.update()
        draws = list(make_sampler(np.ones(len(samples.rows)), sampler_size, seed=1))
        if on_device:
            cached = DeviceBatches(cache.array(), samples, draws, config.batch_size, config.image_size, device, 1)
        else:
            cached = DataLoader(CachedDataset(cache.array(), samples, train_transform(config.image_size)),
                                batch_size=config.batch_size, num_workers=config.workers, sampler=draws)
        results["cached_images_per_s"] = _timed(model, optimizer, cached, tasks, class_weights, config.steps,
                                                lambda x: normalise(jitter_colours(x), model.mean, model.std), device)
        bar.update()
        naive = DataLoader(NaiveJpegDataset(manifest.image_paths(), samples.targets, config.image_size, model.mean,
                                            model.std),
                           batch_size=config.batch_size, num_workers=config.workers,
                           sampler=draws, pin_memory=on_gpu(device))
        results["naive_images_per_s"] = _timed(model, optimizer, naive, tasks, class_weights, config.steps,
                                               lambda x: x.contiguous(memory_format=torch.channels_last), device)
        bar.update()
        # The limit is measured before and after the pipelines; the faster run is the fairer bound.
        results["compute_images_per_s"] = max(first_compute, compute_limit())
        bar.update()
    results["cached_vs_compute"] = results["cached_images_per_s"] / results["compute_images_per_s"]
    results["cached_vs_naive"] = results["cached_images_per_s"] / results["naive_images_per_s"]
    results.update(backbone=config.backbone, image_size=config.image_size, batch_size=config.batch_size,
                   steps=config.steps, source_size=config.source_size, threads=torch.get_num_threads(),
                   workers=config.workers, device=describe_device(device), train_depthwise=config.train_depthwise,
                   freeze_stages=config.freeze_stages,
                   augmented_on="device" if on_device else "loader")
    write_json(Path(config.data).parent / "bench-train.json", results)
    return results

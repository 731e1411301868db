"""The batch input path: whole uint8 batches gathered from the image cache in one indexing call, (on a GPU)
pinned and copied asynchronously, and augmented on the device, one affine warp per sample, so no per-image
Python runs in the training loop (only the few offline-augmented rows get their fixed augmentation on the CPU
first). The default on a GPU; on the CPU `augment_on: device` takes it too, and it beat the per-image loader
there (the demo sets it).

The warp draws what the CPU path's `train_transform` draws (RandomResizedCrop at scale 0.8-1 and ratio 3/4-4/3,
a horizontal flip, rotation up to 15 degrees, translation up to 0.1) and applies them as one resampling.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from celadon.classify.data import Samples
from celadon.data.augment import augment_image
from celadon.device import on_gpu
from celadon.errors import CeladonError

SCALE, RATIO, DEGREES, TRANSLATE = (0.8, 1.0), (3 / 4, 4 / 3), 15.0, 0.1
AUGMENT_ON = ("auto", "loader", "device")


def augments_on_device(augment_on: str, device: str) -> bool:
    """Whether training batches take this path: `device` always (on the CPU too, where one warp per batch beat
    the loader's per-image transforms: 100-108 s vs 133-145 s per demo training), `auto` on a GPU, `loader`
    never; any other value is a one-line error."""
    if augment_on not in AUGMENT_ON:
        raise CeladonError(f"augment_on: {augment_on!r} is not one of {', '.join(AUGMENT_ON)}")
    return augment_on == "device" or (augment_on == "auto" and on_gpu(device))


def warp_parameters(n: int, generator: torch.Generator) -> torch.Tensor:
    """(n, 2, 3) affine_grid matrices mapping output to source coordinates (both in -1..1): crop, then flip,
    then rotate and translate the crop, as v2.RandomResizedCrop -> RandomHorizontalFlip -> RandomAffine do."""
    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=generator)

    area = uniform(*SCALE)
    ratio = uniform(math.log(RATIO[0]), math.log(RATIO[1])).exp()
    width, height = (area * ratio).sqrt(), (area / ratio).sqrt()
    # a crop wider (taller) than the photo keeps its area at full width (height); torchvision would draw again
    width, height = torch.where(width > 1, 1.0, torch.where(height > 1, area, width)), \
        torch.where(height > 1, 1.0, torch.where(width > 1, area, height))
    centre_x, centre_y = uniform(-1, 1) * (1 - width), uniform(-1, 1) * (1 - height)
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    angle = uniform(-DEGREES, DEGREES) * math.pi / 180
    shift = torch.stack([uniform(-2 * TRANSLATE, 2 * TRANSLATE), uniform(-2 * TRANSLATE, 2 * TRANSLATE)], 1)
    cos, sin = angle.cos(), angle.sin()
    unrotate = torch.stack([torch.stack([cos, sin], 1), torch.stack([-sin, cos], 1)], 1)  # R(-angle)
    scale = torch.diag_embed(torch.stack([width * flip, height], 1))
    linear = scale @ unrotate
    offset = torch.stack([centre_x, centre_y], 1) - (linear @ shift.unsqueeze(2)).squeeze(2)
    return torch.cat([linear, offset.unsqueeze(2)], 2)


def warp_batch(images: torch.Tensor, size: int, theta: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW (any device) -> float NCHW in 0..255 at `size`, each image resampled by its matrix; the
    area outside the photo is black, as RandomAffine's fill=0."""
    theta = theta.to(images.device)
    grid = F.affine_grid(theta, [len(images), images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class DeviceBatches:
    """One epoch of training batches on `device`: (augmented float images 0..255, targets), in `draws` order."""

    def __init__(self, pixels: np.ndarray, samples: Samples, draws: list[int], batch_size: int, image_size: int,
                 device: str, seed: int):
        self.pixels, self.samples, self.draws = pixels, samples, np.asarray(draws, dtype=np.int64)
        self.batch_size, self.image_size, self.device, self.seed = batch_size, image_size, device, seed

    def __len__(self) -> int:
        return -(-len(self.draws) // self.batch_size)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed)
        for start in range(0, len(self.draws), self.batch_size):
            index = self.draws[start:start + self.batch_size]
            images = torch.from_numpy(np.ascontiguousarray(self.pixels[self.samples.rows[index]])).permute(0, 3, 1, 2)
            seeds = self.samples.aug_seeds[index]
            for k in np.flatnonzero(seeds >= 0):  # the row's fixed offline augmentation (a minority of rows)
                images[k] = augment_image(images[k], int(seeds[k]))
            targets = torch.from_numpy(self.samples.targets[index])
            if on_gpu(self.device):
                images, targets = images.pin_memory(), targets.pin_memory()
            images = images.to(self.device, non_blocking=True)
            targets = targets.to(self.device, non_blocking=True)
            yield warp_batch(images, self.image_size, warp_parameters(len(index), generator)), targets

"""Threshold offline augmentation (paper §3.2.1): combinations with fewer than `threshold` training
images are topped up to `target` with flipped/rotated/jittered/cropped copies of their originals.

`virtual` mode records (source image, augmentation seed) rows and renders them on the fly, so the 5x set
costs no disk; `files` mode materialises the same images (identical pixels for the same seed). Only the
training split is ever augmented.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torchvision.transforms import v2
from tqdm import tqdm

from celadon.data.images import load_image
from celadon.data.manifest import (
    AUG_SEED_COLUMN,
    PATH_COLUMN,
    SOURCE_COLUMN,
    Manifest,
    resolve_image_path,
    write_manifest,
)
from celadon.errors import CeladonError
from celadon.runinfo import atomic_write_bytes, write_run_info

ORIGIN = "origin"


@dataclass
class AugmentConfig:
    splits: str = ""  # splits.csv from `celadon data split`
    out: str = ""  # where augmented.csv (and, in files mode, the images) go
    taxonomy: str | None = None
    threshold: int = 50  # combinations with fewer training images than this are augmented
    target: int = 100  # ... up to this many images (originals + copies)
    mode: str = "virtual"  # virtual (seeds only) or files (materialised images)
    seed: int = 0  # of the copies' augmentations
    key: tuple[str, ...] | None = None  # tasks forming the combination; None = all tasks


def paper_transform(size: tuple[int, int], fill: tuple[int, int, int]) -> v2.Compose:
    """Flip p .5, rotation +-30 deg, colour jitter .2/.2/.2/.05, random resized crop .8-1 (paper §3.2.1)."""
    return v2.Compose([
        v2.RandomHorizontalFlip(p=0.5),
        v2.RandomRotation(30, fill=fill),
        v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05),
        v2.RandomResizedCrop((size[1], size[0]), scale=(0.8, 1.0), antialias=True),
    ])


def _border_colour(array: np.ndarray) -> tuple[int, int, int]:
    """Median colour of the image border: rotation fills corners with the backdrop, not black wedges."""
    border = np.concatenate([array[0], array[-1], array[:, 0], array[:, -1]])
    return tuple(int(v) for v in np.median(border, axis=0))


def augment_image(img: Image.Image | torch.Tensor, seed: int) -> Image.Image | torch.Tensor:
    """The augmentation of `img` (PIL, or uint8 CHW tensor) for `seed`: the same pixels every time."""
    if isinstance(img, torch.Tensor):
        size, array = (img.shape[-1], img.shape[-2]), img.permute(1, 2, 0).numpy()
    else:
        size, array = img.size, np.asarray(img)
    transform = paper_transform(size, _border_colour(array))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return transform(img)


def load_row_image(manifest: Manifest, index: int) -> Image.Image:
    """The RGB image of a manifest row, applying its virtual augmentation when the row has a seed."""
    img = load_image(manifest.image_path(index))
    seed = int(manifest.augmentation_seeds()[index])
    return augment_image(img, seed) if seed >= 0 else img


def _copy_seed(seed: int, source: str, copy: int) -> int:
    digest = hashlib.sha256(f"{seed}:{source}:{copy}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def plan_augmentation(manifest: Manifest, config: AugmentConfig) -> pd.DataFrame:
    """New rows (one per augmented copy) for rare training combinations, spread round-robin over originals."""
    if "split" not in manifest.frame.columns:
        raise CeladonError(f"{manifest.source}: no 'split' column; run `celadon data split` first and augment "
                           "its splits.csv (augmentation must never touch val/test)")
    train = manifest.frame[manifest.frame["split"] == "train"]
    keys = manifest.combination_keys(config.key)[train.index]
    rows = []
    for _, index in keys.groupby(keys, sort=True).groups.items():
        originals = train.loc[sorted(index, key=lambda i: str(train.at[i, PATH_COLUMN]))]
        n = len(originals)
        if n >= config.threshold:
            continue
        for copy in range(config.target - n):
            original = originals.iloc[copy % n]
            source = str(original[PATH_COLUMN])
            row = original.to_dict()
            row.update({SOURCE_COLUMN: source, AUG_SEED_COLUMN: _copy_seed(config.seed, source, copy),
                        ORIGIN: "augmented"})
            rows.append(row)
    return pd.DataFrame(rows, columns=[*manifest.frame.columns, SOURCE_COLUMN, AUG_SEED_COLUMN, ORIGIN])


def augment_manifest(manifest: Manifest, out_dir: str | Path, config: AugmentConfig,
                     progress: bool = True) -> tuple[Path, pd.DataFrame]:
    """Write `out_dir/augmented.csv` (all original rows + augmented rows). Resumable in files mode:
    each image is written atomically under a name fixed by its seed, and existing ones are kept."""
    if config.mode not in ("virtual", "files"):
        raise CeladonError(f"unknown augmentation mode {config.mode!r}; use 'virtual' or 'files'")
    out_dir = Path(out_dir).resolve()
    plan = plan_augmentation(manifest, config)
    if config.mode == "files" and len(plan):
        image_dir = out_dir / "images"
        new_paths = []
        for row in tqdm(plan.itertuples(index=False), total=len(plan), desc="augmenting", disable=not progress):
            source = resolve_image_path(manifest.root, getattr(row, SOURCE_COLUMN))
            seed = int(getattr(row, AUG_SEED_COLUMN))
            target = image_dir / f"{source.stem}__aug{seed:010d}.png"
            if not target.exists():
                buffer = io.BytesIO()
                augment_image(load_image(source), seed).save(buffer, format="PNG")
                atomic_write_bytes(target, buffer.getvalue())
            new_paths.append(str(target))
        plan[PATH_COLUMN] = new_paths
        plan[AUG_SEED_COLUMN] = None
    originals = manifest.frame.copy()
    originals[SOURCE_COLUMN] = originals[PATH_COLUMN]
    originals[AUG_SEED_COLUMN] = None
    originals[ORIGIN] = originals.get(ORIGIN, "real")
    combined = pd.concat([originals, plan], ignore_index=True).astype(object)
    combined = combined.where(combined.notna(), None)
    path = write_manifest(Manifest(combined, manifest.root, manifest.taxonomy), out_dir / "augmented.csv")
    write_run_info(out_dir, "data augment", {**asdict(config), "splits": config.splits or manifest.source,
                                             "out": str(out_dir)}, config.seed)
    return path, plan

"""The fast CPU data path: decode + resize every image once into a uint8 cache, then augment uint8 tensors.

The cache is one memory-mapped array per (resolution) in a cache folder, with rows keyed by the file's
content hash, so the same photo listed twice, or re-used by another run, is decoded once. Appends are
crash-safe: the index (written atomically, after the pixels) decides which rows exist. Trainings running at once
(a study's `jobs`) share the cache: appends hold a lock on the folder and re-read the index first, so rows are
never written twice at the same place; rows once written never move, so readers need no lock.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2
from tqdm import tqdm

from celadon.data.augment import augment_image
from celadon.data.images import ImageReadError, load_image, prepare_square
from celadon.data.manifest import JUDGE_CONFIDENCE, TRAIN_TASKS_COLUMN, Manifest
from celadon.errors import CeladonError
from celadon.runinfo import atomic_write_text

MISSING = -1  # target value of an unknown label: masked out of that task's loss and metrics


def cache_resolution(image_size: int) -> int:
    """Cache a little larger than the training crop (256/224, as ImageNet recipes do)."""
    return int(round(image_size * 8 / 7))


class ImageCache:
    """uint8 (N, S, S, 3) pixels in `folder/pixels_{S}.u8`, rows located by content hash; with `source_size`,
    images pass through that square size first (`prepare_square`), in files of their own."""

    def __init__(self, folder: str | Path, size: int, source_size: int = 0):
        self.folder, self.size, self.source_size = Path(folder), size, source_size
        self.folder.mkdir(parents=True, exist_ok=True)
        self.name = f"{size}_from{source_size}" if source_size else str(size)
        self.pixels_path = self.folder / f"pixels_{self.name}.u8"
        self.index_path = self.folder / f"index_{self.name}.json"
        self.index = self._read_index()
        self.row_bytes = size * size * 3

    def _read_index(self) -> dict[str, int]:
        return json.loads(self.index_path.read_text()) if self.index_path.exists() else {}

    @staticmethod
    def _digests(paths: list[Path], progress: bool) -> list[str]:
        """Content hashes from the image check's cache (path, size, modification time), which training and
        QC have just filled: a 25k-photo collection is not re-read at every training start."""
        from celadon.data.check import scan_paths

        results = scan_paths(paths, progress=progress)
        for result in results:
            if isinstance(result, ImageReadError):
                raise result
        return [result.sha256 for result in results]

    @contextlib.contextmanager
    def _appending(self) -> Iterator[None]:
        """Hold the folder's lock for this resolution, with the index as the last appender left it."""
        try:
            import fcntl
        except ImportError:  # Windows: one writer at a time is the user's to keep
            fcntl = None
        with open(self.folder / f"lock_{self.name}", "a") as lock:
            if fcntl:
                fcntl.flock(lock, fcntl.LOCK_EX)
            self.index = self._read_index()
            yield

    def rows_for(self, paths: list[Path], progress: bool = True) -> np.ndarray:
        """Row of each path, decoding and appending the images the cache does not hold yet."""
        digests = self._digests(paths, progress)
        if not all(d in self.index for d in digests):
            with self._appending():
                self._append({d: p for d, p in zip(digests, paths, strict=True) if d not in self.index}, progress)
        return np.array([self.index[d] for d in digests], dtype=np.int64)

    def _append(self, todo: dict[str, Path], progress: bool) -> None:
        if todo:
            committed = len(self.index) * self.row_bytes
            with open(self.pixels_path, "ab") as handle:
                handle.truncate(committed)  # drop a partial row left by a killed run
                handle.seek(committed)
                for digest, path in tqdm(todo.items(), desc=f"caching images at {self.size}px",
                                         disable=not progress, leave=False):
                    handle.write(prepare_square(load_image(path), self.size, self.source_size).tobytes())
                    self.index[digest] = len(self.index)
                handle.flush()
            atomic_write_text(self.index_path, json.dumps(self.index))

    def array(self) -> np.ndarray:
        return np.memmap(self.pixels_path, dtype=np.uint8, mode="r",
                         shape=(len(self.index), self.size, self.size, 3))


def train_transform(image_size: int) -> v2.Compose:
    """The geometric part of the paper's Table 8, per sample on uint8 CHW tensors. Rotation (15 deg) and
    translation (0.1) are one affine warp instead of two; colour jitter runs per batch (`jitter_colours`),
    where it costs a few vectorised passes instead of ~2 ms per image (hue) in ColorJitter."""
    return v2.Compose([
        v2.RandomResizedCrop(image_size, scale=(0.8, 1.0), antialias=True),
        v2.RandomHorizontalFlip(0.5),
        v2.RandomAffine(degrees=15, translate=(0.1, 0.1)),
    ])


_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_LUMA = _RGB_TO_YIQ[0].view(1, 3, 1, 1)


def jitter_colours(batch: torch.Tensor, brightness: float = 0.2, contrast: float = 0.2, saturation: float = 0.2,
                   hue: float = 0.1) -> torch.Tensor:
    """Per-sample colour jitter of a uint8 NCHW batch (factors as torchvision's ColorJitter: brightness,
    contrast and saturation in [1-x, 1+x], hue a rotation of up to x turns, done in YIQ space).
    Returns float NCHW in 0..255, drawing from torch's global RNG."""
    x = batch.float()
    n = x.shape[0]

    def factors(amount: float) -> torch.Tensor:  # drawn on the CPU: the same numbers on every device
        return (1 + (torch.rand(n) * 2 - 1) * amount).view(n, 1, 1, 1).to(x.device)

    x = x * factors(brightness)
    luma = _LUMA.to(x.device)
    grey_mean = (x * luma).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    x = (x - grey_mean) * factors(contrast) + grey_mean
    grey = (x * luma).sum(1, keepdim=True)
    x = grey + (x - grey) * factors(saturation)
    if hue:
        angle = (torch.rand(n) * 2 - 1) * hue * 2 * torch.pi
        cos, sin = angle.cos(), angle.sin()
        rotation = torch.zeros(n, 3, 3)
        rotation[:, 0, 0] = 1
        rotation[:, 1, 1], rotation[:, 1, 2], rotation[:, 2, 1], rotation[:, 2, 2] = cos, -sin, sin, cos
        matrix = torch.linalg.inv(_RGB_TO_YIQ) @ rotation @ _RGB_TO_YIQ
        x = torch.einsum("bij,bjhw->bihw", matrix.to(x.device), x)
    return x.clamp_(0, 255)


def eval_transform(image_size: int) -> v2.Compose:
    return v2.Compose([v2.CenterCrop(image_size)])


def encode_targets(manifest: Manifest, tasks: list[str]) -> np.ndarray:
    """(N, T) int64 class indices in taxonomy order, MISSING where a label is unknown."""
    columns = []
    for task in tasks:
        lookup = {code: i for i, code in enumerate(manifest.taxonomy.task(task).codes)}
        columns.append([lookup.get(v, MISSING) if v is not None else MISSING for v in manifest.frame[task]])
    return np.array(columns, dtype=np.int64).T.reshape(len(manifest), len(tasks))


@dataclass
class Samples:
    """What a dataset needs per row: cache row, targets, virtual-augmentation seed (or -1), source, and the
    weight of each (row, task) label in the loss."""

    rows: np.ndarray
    targets: np.ndarray
    aug_seeds: np.ndarray
    synthetic: np.ndarray  # bool per row
    label_weights: np.ndarray  # float32 (N, T): 1, or QC's judge's confidence in the label (synthetic_confidence)


def prepare_samples(manifest: Manifest, tasks: list[str], cache: ImageCache, synthetic: bool = False,
                    masked_tasks: tuple[str, ...] = (), progress: bool = True, confidence: bool = False) -> Samples:
    """Cache the manifest's images and encode its labels; `masked_tasks` are hidden (e.g. glaze for
    synthetic images, so they train only the other tasks), and so is, per row, every task its `train_tasks`
    cell (written by `celadon synth curate`) does not name. With `confidence`, each label weighs what QC's
    judge gave it (`judge_p_<task>`; 1 for a task the judge did not read)."""
    targets = encode_targets(manifest, tasks)
    for task in masked_tasks:
        if task in tasks:
            targets[:, tasks.index(task)] = MISSING
    if TRAIN_TASKS_COLUMN in manifest.frame:
        for row, cell in enumerate(manifest.frame[TRAIN_TASKS_COLUMN]):
            trained = set(str(cell or "").split(","))
            for j, task in enumerate(tasks):
                if task not in trained:
                    targets[row, j] = MISSING
    weights = judge_confidence(manifest, tasks) if confidence else np.ones(targets.shape, dtype=np.float32)
    aug = manifest.augmentation_seeds()
    rows = cache.rows_for(manifest.image_paths(), progress)
    return Samples(rows, targets, aug, np.full(len(manifest), synthetic), weights)


def judge_confidence(manifest: Manifest, tasks: list[str]) -> np.ndarray:
    """(N, T) float32: QC's judge's probability of each row's label per task, 1 where it read none."""
    columns = [f"{JUDGE_CONFIDENCE}{t}" for t in tasks if f"{JUDGE_CONFIDENCE}{t}" in manifest.frame]
    if not columns:
        raise CeladonError(f"{manifest.source}: no {JUDGE_CONFIDENCE}<task> column to weigh synthetic labels by (its "
                           "QC ran without a judge, --model, or before QC wrote them): run `celadon synth qc` and "
                           "`celadon synth curate` again, or drop synthetic_confidence")
    weights = np.ones((len(manifest), len(tasks)), dtype=np.float32)
    for j, task in enumerate(tasks):
        column = f"{JUDGE_CONFIDENCE}{task}"
        if column in manifest.frame:
            values = pd.to_numeric(manifest.frame[column], errors="coerce").to_numpy(dtype=np.float64)
            weights[:, j] = np.where(np.isfinite(values), values, 1.0)
    return weights


def concat_samples(parts: list[Samples]) -> Samples:
    return Samples(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("rows", "targets", "aug_seeds",
                                                                               "synthetic", "label_weights")))


class CachedDataset(Dataset):
    """(uint8 CHW image, targets) from the cache; normalisation happens per batch, in float, later."""

    def __init__(self, pixels: np.ndarray, samples: Samples, transform: v2.Compose):
        self.pixels, self.samples, self.transform = pixels, samples, transform

    def __len__(self) -> int:
        return len(self.samples.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = torch.from_numpy(np.array(self.pixels[self.samples.rows[index]])).permute(2, 0, 1)
        seed = int(self.samples.aug_seeds[index])
        if seed >= 0:
            image = augment_image(image, seed)  # the row's fixed offline augmentation
        return self.transform(image), torch.from_numpy(self.samples.targets[index])


def normalise(batch: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """NCHW in 0..255 (uint8 or float) -> normalised float, channels_last (faster convolutions on CPU)."""
    mean_t = torch.tensor(mean, device=batch.device).view(1, 3, 1, 1) * 255
    std_t = torch.tensor(std, device=batch.device).view(1, 3, 1, 1) * 255
    return ((batch.float() - mean_t) / std_t).contiguous(memory_format=torch.channels_last)

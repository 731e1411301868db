"""Loading a trained model directory and predicting top-k labels for image files."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from celadon.checkpoint import load_tensors
from celadon.classify.data import CachedDataset, cache_resolution, eval_transform, normalise
from celadon.classify.models import ModelConfig, MultiTaskNet
from celadon.data.images import IMAGE_EXTENSIONS, ImageReadError, load_image, prepare_square
from celadon.device import autocast, on_gpu
from celadon.errors import CeladonError


@dataclass
class LoadedModel:
    model: MultiTaskNet
    card: dict

    @property
    def image_size(self) -> int:
        return int(self.card["image_size"])

    @property
    def source_size(self) -> int:
        """The square size every image passed through in training (0: none); its readings must too."""
        return int(self.card.get("source_size") or 0)

    def classes(self, task: str) -> list[str]:
        return self.card["classes"][task]


def load_model(model_dir: str | Path, device: str = "cpu") -> LoadedModel:
    """Rebuild the network from `model.json` and load `model.safetensors` (no pickle involved), on `device`
    (a resolved one: see celadon.device)."""
    model_dir = Path(model_dir)
    card_path = model_dir / "model.json"
    if not card_path.exists():
        raise CeladonError(f"{model_dir} is not a trained model folder (no model.json); pass a `celadon train` --out")
    card = json.loads(card_path.read_text(encoding="utf-8"))
    model = MultiTaskNet(ModelConfig(**card["model"]))
    model.load_state_dict(load_tensors(model_dir / "model.safetensors"))
    model.pretrained = card.get("pretrained", model.pretrained)
    return LoadedModel(model.eval().to(device, memory_format=torch.channels_last), card)


def expand_images(inputs: list[str]) -> list[Path]:
    """Files as given; folders expanded to their image files (sorted, recursive)."""
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS))
        else:
            paths.append(path)
    return paths


@torch.no_grad()
def predict_images(loaded: LoadedModel, paths: list[Path], top_k: int = 3, batch_size: int = 32
                   ) -> tuple[list[dict], list[str]]:
    """Top-k (label, probability) per task for each readable image; one error line per unreadable file."""
    transform = eval_transform(loaded.image_size)
    size = cache_resolution(loaded.image_size)
    results, errors, batch, names = [], [], [], []

    def flush() -> None:
        if not batch:
            return
        device = next(loaded.model.parameters()).device
        images = normalise(torch.stack(batch).to(device), loaded.model.mean, loaded.model.std)
        with autocast(device.type):
            outputs = {t: v.float().softmax(-1).cpu().numpy() for t, v in loaded.model(images).items()}
        for i, name in enumerate(names):
            row = {"image": name}
            for task, probs in outputs.items():
                order = np.argsort(-probs[i])[:top_k]
                row[task] = [(loaded.classes(task)[c], float(probs[i][c])) for c in order]
            results.append(row)
        batch.clear()
        names.clear()

    for path in paths:
        try:
            pixels = prepare_square(load_image(path), size, loaded.source_size)
        except ImageReadError as exc:
            errors.append(f"error: {exc}")
            continue
        batch.append(transform(torch.from_numpy(pixels).permute(2, 0, 1)))
        names.append(str(path))
        if len(batch) == batch_size:
            flush()
    flush()
    return results, errors


@torch.no_grad()
def predict_logits(model: MultiTaskNet, dataset: CachedDataset, batch_size: int, device: str = "cpu"
                   ) -> dict[str, np.ndarray]:
    """Logits of every row of `dataset`, in order; the model must already sit on `device`."""
    model.eval()
    outputs: dict[str, list[np.ndarray]] = {t: [] for t in model.task_names}
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, pin_memory=on_gpu(device))
    for images, _ in loader:
        with autocast(device):
            logits = model(normalise(images.to(device, non_blocking=True), model.mean, model.std))
        for task, value in logits.items():
            outputs[task].append(value.float().cpu().numpy())
    return {t: np.concatenate(v) if v else np.zeros((0, model.config.tasks[t])) for t, v in outputs.items()}

"""`celadon evaluate`: metrics of a trained model on a split, written as metrics.json + confusion plots."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay  # noqa: E402

from celadon.classify.data import CachedDataset, ImageCache, cache_resolution, eval_transform, prepare_samples  # noqa: E402
from celadon.classify.metrics import defined, mean_macro_f1, task_metrics  # noqa: E402
from celadon.classify.predict import (
    load_model,  # noqa: E402
    predict_logits,  # noqa: E402
)
from celadon.cpu import set_threads  # noqa: E402
from celadon.data.manifest import read_manifest  # noqa: E402
from celadon.device import resolve_device  # noqa: E402
from celadon.errors import CeladonError  # noqa: E402
from celadon.runinfo import atomic_write_text, default_cache_dir, write_json, write_run_info  # noqa: E402
from celadon.taxonomy import load_taxonomy  # noqa: E402

METRICS_SCHEMA = 1


@dataclass
class EvaluateConfig:
    model_dir: str = ""  # a `celadon train` output folder
    splits: str = ""  # the splits.csv the model was trained on
    out: str = ""  # default: MODEL_DIR/eval-SPLIT
    split: str = "test"  # train, val or test
    minority_threshold: int = 50  # classes with fewer training images are "minority" (paper Table 15)
    batch_size: int = 64  # images per forward pass
    cache_dir: str | None = None  # default $CELADON_CACHE or ~/.cache/celadon
    threads: int = 0  # torch threads (0: every usable core, a count fixed by the machine; celadon.cpu)
    device: str = "auto"  # auto (the GPU when there is one), cpu, cuda or cuda:N
    taxonomy: str | None = None  # default: the taxonomy the model was trained with


def evaluate_model(config: EvaluateConfig, progress: bool = True) -> dict:
    set_threads(config.threads)
    device = resolve_device(config.device)
    loaded = load_model(config.model_dir, device)
    source = config.taxonomy or loaded.card.get("taxonomy", "")
    taxonomy = load_taxonomy(None if source.startswith("celadon:") or not source else source)
    manifest = read_manifest(config.splits, taxonomy)
    if "split" not in manifest.frame:
        raise CeladonError(f"{config.splits}: no 'split' column; evaluate a splits.csv")
    part = manifest.subset(manifest.frame["split"] == config.split)
    if len(part) == 0:
        raise CeladonError(f"{config.splits}: no rows in split {config.split!r}")
    train = manifest.subset(manifest.frame["split"] == "train")
    tasks = loaded.model.task_names
    cache = ImageCache(default_cache_dir(config.cache_dir), cache_resolution(loaded.image_size), loaded.source_size)
    samples = prepare_samples(part, tasks, cache, progress=progress)
    logits = predict_logits(loaded.model, CachedDataset(cache.array(), samples, eval_transform(loaded.image_size)),
                            config.batch_size, device)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"schema": METRICS_SCHEMA, "split": config.split, "n_images": len(part), "model": str(config.model_dir),
              "pretrained": loaded.model.pretrained, "tasks": {}}
    for j, task in enumerate(tasks):
        classes = loaded.classes(task)
        counts = train.frame[task].value_counts().to_dict()
        metrics = task_metrics(samples.targets[:, j], logits[task], classes, counts, config.minority_threshold,
                               top_pairs=0)
        metrics["confusion_pairs_all"] = metrics.pop("confusion_pairs")
        metrics["confusion_pairs"] = metrics["confusion_pairs_all"][:10]
        matrix = np.array(metrics.pop("confusion"))
        _write_confusion(out, task, matrix, classes)
        result["tasks"][task] = metrics
    result["mean_f1_macro"] = mean_macro_f1(result["tasks"])
    _write_predictions(out, part, tasks, samples.targets, logits, loaded)
    result = defined(result)
    write_json(out / "metrics.json", result)
    write_run_info(out, "evaluate", config, device=device)
    return result


def _write_predictions(out: Path, part, tasks: list[str], targets: np.ndarray, logits: dict[str, np.ndarray],
                       loaded) -> None:
    """Per image: true and predicted code per task (empty where the label is missing), for per-image analyses
    such as accuracy on rare label combinations."""
    # relative to this file's folder, so a copied or moved study still compares the same images
    frame = pd.DataFrame({"path": [os.path.relpath(p.resolve(), out.resolve()) for p in part.image_paths()]})
    for j, task in enumerate(tasks):
        classes = loaded.classes(task)
        frame[task] = [classes[t] if t >= 0 else "" for t in targets[:, j]]
        frame[f"pred_{task}"] = [classes[i] for i in logits[task].argmax(axis=1)]
    atomic_write_text(out / "predictions.csv", frame.to_csv(index=False))


def _write_confusion(out: Path, task: str, matrix: np.ndarray, classes: list[str]) -> None:
    used = np.flatnonzero(matrix.sum(0) + matrix.sum(1))  # classes that occur as truth or prediction
    frame = pd.DataFrame(matrix[np.ix_(used, used)], index=[classes[i] for i in used],
                         columns=[classes[i] for i in used])
    atomic_write_text(out / f"confusion_{task}.csv", frame.to_csv())
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * len(used) + 2),) * 2)
    ConfusionMatrixDisplay(frame.to_numpy(), display_labels=list(frame.index)).plot(
        ax=ax, colorbar=False, xticks_rotation=70, values_format="d")
    ax.set_title(f"{task}: true (rows) vs predicted")
    fig.tight_layout()
    fig.savefig(out / f"confusion_{task}.png", dpi=100)
    plt.close(fig)


def load_decision_metrics(path: str | Path, allow_test: bool = False) -> dict:
    """A metrics.json that may steer training (selection tiers, plans, QC gates): computed on training or
    validation data, never on test, which is read once at the end (`allow_test` for users who know why)."""
    metrics = load_metrics(path)
    split = metrics.get("split")
    if split is None:
        raise CeladonError(f"{path}: records no split; re-run `celadon evaluate MODEL SPLITS --split val`")
    if split == "test" and not allow_test:
        raise CeladonError(f"{path}: computed on the test split, which must not steer what is trained; evaluate on "
                           "validation (`celadon evaluate MODEL SPLITS --split val`) or pass --allow-test-metrics")
    return metrics


def load_metrics(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.json"
    if not path.exists():
        raise CeladonError(f"{path} does not exist; run `celadon evaluate` first")
    return json.loads(path.read_text(encoding="utf-8"))

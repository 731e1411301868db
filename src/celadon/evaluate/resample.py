"""Metrics of one evaluation under bootstrap image weights, from its predictions.csv.

A row of weights says how often each test image was drawn; weights of all ones give the plain metric, equal to
what `task_metrics` wrote in metrics.json (macro-F1 over the classes present, weighted F1, top-1, mean F1 of a
class group). Every replicate is a weighted confusion count, so thousands of them cost a few matrix products.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from celadon.errors import CeladonError


def read_predictions(folder: str | Path) -> pd.DataFrame:
    """An evaluate stage's predictions.csv: true and predicted labels as text, "" where a label is unknown."""
    return pd.read_csv(Path(folder) / "predictions.csv", keep_default_na=False, dtype=str)


def image_locations(folder: str | Path, paths: list[str]) -> list[str]:
    """Where each image of a predictions.csv is now, comparable between evaluations: paths relative to the
    file's folder (how celadon writes them now), or absolute ones of older studies, rebased when the
    study folder has moved since (its stage.json records where it was)."""
    folder = Path(folder)
    marker = folder / "stage.json"
    old = json.loads(marker.read_text(encoding="utf-8")).get("root") if marker.exists() else None
    new = str(folder.resolve().parent.parent)  # <study>/stages/<evaluate-key>
    located = []
    for path in paths:
        if os.path.isabs(path) and old and old != new and path.startswith(old + "/"):
            path = new + path[len(old):]
        located.append(os.path.normpath(path if os.path.isabs(path) else os.path.join(folder.resolve(), path)))
    return located


class ResampledPredictions:
    """One evaluation's per-image predictions as integer arrays, for metrics under image weights."""

    def __init__(self, frame: pd.DataFrame, tasks: Sequence[str]):
        self.paths = frame["path"].tolist()
        self.tasks = list(tasks)
        self.classes: dict[str, list[str]] = {}
        self.truth: dict[str, np.ndarray] = {}
        self.predicted: dict[str, np.ndarray] = {}
        for task in self.tasks:
            names = sorted(set(frame[task]) | set(frame[f"pred_{task}"]) - {""})
            index = {name: i for i, name in enumerate(names)}
            self.classes[task] = names
            self.truth[task] = np.array([index.get(v, -1) if v else -1 for v in frame[task]], dtype=int)
            self.predicted[task] = np.array([index[v] for v in frame[f"pred_{task}"]], dtype=int)

    @classmethod
    def load(cls, folder: str | Path, tasks: Sequence[str]) -> ResampledPredictions:
        frame = read_predictions(folder)
        missing = [t for t in tasks if t not in frame or f"pred_{t}" not in frame]
        if missing:
            raise CeladonError(f"{folder}/predictions.csv: no columns for task(s) {', '.join(missing)}; "
                               "re-run `celadon evaluate`")
        loaded = cls(frame, tasks)
        loaded.paths = image_locations(folder, loaded.paths)
        return loaded

    def labels(self, task: str) -> list[str]:
        """Per image, the true label of `task` as text ("" where unknown)."""
        return [self.classes[task][t] if t >= 0 else "" for t in self.truth[task]]

    def labelled(self, task: str) -> np.ndarray:
        return self.truth[task] >= 0

    def correct(self, task: str) -> np.ndarray:
        """Per image: the label is known and the prediction matches it."""
        return self.labelled(task) & (self.truth[task] == self.predicted[task])

    def class_counts(self, task: str, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Weighted true positives, false positives and false negatives per class: (resamples, classes) each."""
        y, p, known = self.truth[task], self.predicted[task], self.labelled(task)
        k = len(self.classes[task])
        truth = np.zeros((len(y), k))
        truth[known, y[known]] = 1.0
        predicted = np.zeros((len(y), k))
        predicted[known, p[known]] = 1.0
        return weights @ (truth * predicted), weights @ ((1 - truth) * predicted), weights @ (truth * (1 - predicted))

    def task_scores(self, task: str, weights: np.ndarray, groups: dict[str, set[str]] | None = None
                    ) -> dict[str, np.ndarray]:
        """f1_macro, f1_weighted, top1 and (per named class group) the group's mean class F1, per replicate."""
        tp, fp, fn = self.class_counts(task, weights)
        support = tp + fn
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
            present = support > 0
            scores = {"f1_macro": (f1 * present).sum(1) / present.sum(1),
                      "f1_weighted": (f1 * support).sum(1) / support.sum(1),
                      "top1": tp.sum(1) / support.sum(1)}
            for name, members in (groups or {}).items():
                member = np.array([c in members for c in self.classes[task]]) & present
                scores[name] = (f1 * member).sum(1) / member.sum(1)
        return scores

    def group_accuracy(self, mask: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Top-1 accuracy over images in `mask`, averaged over the tasks labelled there, per replicate."""
        scores = []
        for task in self.tasks:
            known = self.labelled(task) & mask
            if not known.any():
                continue
            with np.errstate(invalid="ignore", divide="ignore"):
                scores.append(weights @ (self.correct(task) & known).astype(float) / (weights @ known.astype(float)))
        if not scores:
            return np.full(len(weights), np.nan)
        with np.errstate(invalid="ignore"):
            stacked = np.vstack(scores)
            return np.where(np.isfinite(stacked), stacked, 0).sum(0) / np.isfinite(stacked).sum(0)

"""Per-task metrics from logits; unknown labels (MISSING) are left out of that task's metrics.

Macro-F1 averages over the classes present in the evaluated labels: a class with no test image has no
defined recall, and counting it as 0 would punish a model for the split, not for its predictions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)

MISSING = -1


def task_metrics(y_true: np.ndarray, logits: np.ndarray, classes: Sequence[str],
                 train_counts: Mapping[str, int] | None = None, minority_threshold: int = 50,
                 top_pairs: int = 10) -> dict:
    """top1, top5, F1 macro/weighted, per-class P/R/F1/support, confusion matrix and pairs, and (with
    training counts) F1 of minority vs majority classes."""
    y_true = np.asarray(y_true)
    labelled = y_true != MISSING
    y, scores = y_true[labelled], np.asarray(logits)[labelled]
    n_classes = len(classes)
    if len(y) == 0:
        return {"n": 0, "top1": float("nan"), "top5": None, "f1_macro": float("nan"),
                "f1_weighted": float("nan"), "per_class": {}, "confusion": [], "confusion_pairs": []}
    pred = scores.argmax(axis=1)
    present = sorted(set(y.tolist()))
    # With 5 classes or fewer every label is in the top 5: a constant 1.0 says nothing, so it is left out.
    top5 = None if n_classes <= 5 else float(top_k_accuracy_score(y, scores, k=5, labels=np.arange(n_classes)))
    shown = sorted(set(present) | set(pred.tolist()))
    precision, recall, f1, support = precision_recall_fscore_support(y, pred, labels=shown, zero_division=0)
    per_class = {classes[c]: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                 for c, p, r, f, s in zip(shown, precision, recall, f1, support, strict=True)}
    matrix = confusion_matrix(y, pred, labels=np.arange(n_classes))
    result = {
        "n": int(len(y)),
        "top1": float(accuracy_score(y, pred)),
        "top5": top5,
        "f1_macro": float(f1_score(y, pred, labels=present, average="macro", zero_division=0)),
        "f1_weighted": float(f1_score(y, pred, labels=present, average="weighted", zero_division=0)),
        "per_class": per_class,
        "confusion": matrix.tolist(),
        "confusion_pairs": confusion_pairs(matrix, classes, top_pairs),
    }
    if train_counts is not None:
        result["minority_majority"] = minority_majority(per_class, train_counts, minority_threshold)
    return result


def confusion_pairs(matrix: np.ndarray, classes: Sequence[str], top: int = 10) -> list[dict]:
    """The most confused unordered class pairs: errors a->b plus b->a, largest first."""
    pairs = []
    for a in range(len(classes)):
        for b in range(a + 1, len(classes)):
            ab, ba = int(matrix[a, b]), int(matrix[b, a])
            if ab + ba:
                pairs.append({"pair": [classes[a], classes[b]], "count": ab + ba, "a_to_b": ab, "b_to_a": ba})
    pairs.sort(key=lambda p: (-p["count"], p["pair"]))
    return pairs[:top] if top else pairs


def minority_majority(per_class: Mapping[str, dict], train_counts: Mapping[str, int], threshold: int) -> dict:
    """Mean F1 over evaluated classes with fewer than `threshold` training images vs the rest (Table 15)."""
    groups: dict[str, list[float]] = {"minority": [], "majority": []}
    members: dict[str, list[str]] = {"minority": [], "majority": []}
    for name, values in per_class.items():
        if values["support"] == 0:
            continue
        group = "minority" if train_counts.get(name, 0) < threshold else "majority"
        groups[group].append(values["f1"])
        members[group].append(name)
    return {"threshold": threshold,
            **{g: {"classes": members[g], "f1_mean": float(np.mean(v)) if v else float("nan")}
               for g, v in groups.items()}}


def mean_macro_f1(per_task: Mapping[str, Mapping[str, float]]) -> float:
    """The paper's model-selection score: mean over tasks of macro-F1 (tasks without labels skipped)."""
    values = [m["f1_macro"] for m in per_task.values() if not np.isnan(m["f1_macro"])]
    return float(np.mean(values)) if values else float("nan")


def compare_confusion_pairs(before: Mapping, after: Mapping, top: int = 10) -> dict[str, list[dict]]:
    """Per task: how the counts of the most confused pairs (of either model) changed (paper Table 17)."""
    result = {}
    for task in before["tasks"]:
        if task not in after["tasks"]:
            continue
        counts_before = {tuple(p["pair"]): p["count"] for p in before["tasks"][task]["confusion_pairs_all"]}
        counts_after = {tuple(p["pair"]): p["count"] for p in after["tasks"][task]["confusion_pairs_all"]}
        keys = sorted(set(counts_before) | set(counts_after),
                      key=lambda k: (-max(counts_before.get(k, 0), counts_after.get(k, 0)), k))[:top]
        result[task] = [{"pair": list(k), "before": counts_before.get(k, 0), "after": counts_after.get(k, 0),
                         "change": counts_after.get(k, 0) - counts_before.get(k, 0)} for k in keys]
    return result


def defined(value):
    """NaN (an undefined metric: no images of a task, no minority classes) as None, so JSON and tables show
    nothing instead of 'nan'."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: defined(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [defined(v) for v in value]
    return value

"""Imbalance analysis (paper §4.2, Tables 10-12): per task and per label combination.

Metrics are computed over the classes that occur (an absent class has no meaningful ratio); absent
taxonomy classes are listed separately. `analyze_manifest(..., compare=other)` puts a second manifest
(e.g. real + synthetic) beside the first so before/after numbers and plots line up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from celadon.data.manifest import Manifest  # noqa: E402
from celadon.runinfo import write_json, write_run_info  # noqa: E402

SIZE_BUCKETS: tuple[tuple[str, int, float], ...] = (
    ("1", 1, 1), ("2", 2, 2), ("3-9", 3, 9), ("10-49", 10, 49), ("50-99", 50, 99), (">=100", 100, np.inf),
)


def gini(counts: Sequence[float]) -> float:
    """Gini coefficient of class sizes: 0 = perfectly balanced, towards 1 = one class holds everything."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    n = len(x)
    if n == 0 or x.sum() == 0:
        return 0.0
    ranks = np.arange(1, n + 1)
    return float(2.0 * np.sum(ranks * x) / (n * x.sum()) - (n + 1.0) / n)


def lorenz_curve(counts: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative share of classes (x) against cumulative share of images (y), smallest classes first."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    shares = np.concatenate([[0.0], np.cumsum(x) / x.sum()]) if x.sum() else np.zeros(len(x) + 1)
    return np.linspace(0.0, 1.0, len(x) + 1), shares


def imbalance_metrics(counts: Mapping[str, int]) -> dict:
    """Imbalance ratio, coefficient of variation, Gini, normalised entropy, extremes and size buckets."""
    present = {k: int(v) for k, v in counts.items() if v > 0}
    values = np.array(list(present.values()), dtype=np.float64)
    k = len(values)
    if k == 0:
        return {"n_classes": 0, "n_images": 0}
    p = values / values.sum()
    entropy = float(-(p * np.log(p)).sum())
    smallest = min(present, key=lambda c: (present[c], c))
    largest = max(present, key=lambda c: (present[c], c))
    return {
        "n_classes": k,
        "n_images": int(values.sum()),
        "min": {"class": smallest, "count": present[smallest]},
        "max": {"class": largest, "count": present[largest]},
        "imbalance_ratio": float(values.max() / values.min()),
        "coefficient_of_variation": float(values.std() / values.mean()),
        "gini": gini(values),
        "normalized_entropy": float(entropy / np.log(k)) if k > 1 else 1.0,
        "size_buckets": {
            name: int(((values >= lo) & (values <= hi)).sum()) for name, lo, hi in SIZE_BUCKETS
        },
    }


def groupings(manifest: Manifest) -> dict[str, list[str]]:
    """Each task alone, the taxonomy's analysis combinations (e.g. glaze+type) and the full combination."""
    groups = {task: [task] for task in manifest.tasks}
    for combo in manifest.taxonomy.analysis_combinations:
        groups["+".join(combo)] = list(combo)
    if len(manifest.tasks) > 1:
        groups["all"] = list(manifest.tasks)
    return groups


def grouping_counts(manifest: Manifest, tasks: list[str]) -> tuple[dict[str, int], int]:
    """Counts per label (combination) over rows where every label of `tasks` is known, and the rows skipped."""
    known = manifest.frame[tasks].notna().all(axis=1)
    counts = manifest.combination_keys(tasks)[known].value_counts()
    return {str(k): int(v) for k, v in counts.items()}, int((~known).sum())


def describe(manifest: Manifest) -> dict:
    result = {"n_images": len(manifest), "groupings": {}}
    for name, tasks in groupings(manifest).items():
        counts, unlabelled = grouping_counts(manifest, tasks)
        entry = {"tasks": tasks, "unlabelled_rows": unlabelled, **imbalance_metrics(counts),
                 "counts": dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))}
        if len(tasks) == 1:
            entry["absent_classes"] = [c for c in manifest.taxonomy.task(tasks[0]).codes if c not in counts]
        result["groupings"][name] = entry
    return result


@dataclass
class AnalyzeConfig:
    manifest: str = ""  # the manifest to analyse
    out: str = ""  # where imbalance.json and the long-tail and Lorenz plots go
    compare: str | None = None  # a second manifest (e.g. with synthetic images) to put beside the first
    taxonomy: str | None = None
    root: str | None = None  # image paths must resolve inside this folder (default: the manifest's folder)
    allow_outside_root: bool = False  # accept image paths outside the root


def analyze_manifest(
    manifest: Manifest, out_dir: str | Path, compare: Manifest | None = None,
    labels: tuple[str, str] = ("before", "after"), config: AnalyzeConfig | None = None,
) -> dict:
    """Write `imbalance.json` and long-tail/Lorenz plots per grouping; with `compare`, both side by side."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    datasets = {labels[0]: describe(manifest)}
    if compare is not None:
        datasets[labels[1]] = describe(compare)
    for name in datasets[labels[0]]["groupings"]:
        _plot_long_tail(name, {k: d["groupings"][name]["counts"] for k, d in datasets.items()}, out_dir)
        _plot_lorenz(name, {k: d["groupings"][name]["counts"] for k, d in datasets.items()}, out_dir)
    result = datasets[labels[0]] if compare is None else {"datasets": datasets, "change": _change(datasets, labels)}
    write_json(out_dir / "imbalance.json", result)
    other = compare.source if compare is not None else None
    # From the command line: its config (`celadon data analyze -c` re-runs it); in a study, what was compared.
    write_run_info(out_dir, "data analyze", config or {"manifest": manifest.source, "compare": other,
                                                      "labels": list(labels)})
    return result


def _change(datasets: dict, labels: tuple[str, str]) -> dict:
    change = {}
    before, after = datasets[labels[0]]["groupings"], datasets[labels[1]]["groupings"]
    for name, entry in before.items():
        change[name] = {
            metric: {"before": entry.get(metric), "after": after[name].get(metric)}
            for metric in ("imbalance_ratio", "coefficient_of_variation", "gini", "normalized_entropy", "n_images")
        }
    return change


def _plot_long_tail(name: str, series: dict[str, dict[str, int]], out_dir: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 3.5))
    first = next(iter(series.values()))
    order = sorted(first, key=lambda c: -first[c])
    for label, counts in series.items():
        ax.bar(np.arange(len(order)), [counts.get(c, 0) for c in order], alpha=0.6, label=label, width=0.9)
    ax.set_yscale("log")
    ax.set_xlabel(f"{name} classes, most frequent first ({len(order)})")
    ax.set_ylabel("images (log)")
    ax.set_title(f"Long tail: {name}")
    if len(order) <= 25:
        ax.set_xticks(np.arange(len(order)), order, rotation=70, fontsize=7)
    if len(series) > 1:
        ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / f"longtail_{name}.png", dpi=110)
    plt.close(fig)


def _plot_lorenz(name: str, series: dict[str, dict[str, int]], out_dir: Path) -> None:
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="equality")
    for label, counts in series.items():
        x, y = lorenz_curve(list(counts.values()))
        ax.plot(x, y, label=f"{label} (Gini {gini(list(counts.values())):.2f})")
    ax.set_xlabel("cumulative share of classes")
    ax.set_ylabel("cumulative share of images")
    ax.set_title(f"Lorenz curve: {name}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / f"lorenz_{name}.png", dpi=110)
    plt.close(fig)

"""The paper's seven-tier selection of LoRA training images (§3.2.2, Table 3), computed from the data.

Tiers, in priority order, over label combinations of `key` (default: the taxonomy's combination role,
glaze x type for porcelain) counted on the original training images: 1 extreme rare (1 original), 2 very
rare (2-4), 3 confusion pairs (from the reference classifier's confusion matrix, or given), 4 moderate rare (5-10),
5 balance of the key's last task (vessel type), 6 balance of its first (glaze), 7 general fill. Images
come from the (augmented) training set, originals before their augmented copies. Targets are the paper's
at 1,000 images, scaled to `total`; the budget is spent tier by tier.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from celadon.data.manifest import Manifest, write_manifest
from celadon.errors import CeladonError
from celadon.runinfo import atomic_write_text, write_run_info

TIERS = ("extreme rare", "very rare", "confusion pair", "moderate rare", "{} balance", "{} balance", "general")
PAPER_TOTAL, PAPER_TRAIN_ORIGINALS = 1000, 5068


@dataclass
class SelectConfig:
    manifest: str = ""  # augmented.csv (or splits.csv): its training rows are the pool
    out: str = ""  # where selection.csv and selection_summary.csv go
    taxonomy: str | None = None
    total: int = 0  # 0: the paper's proportion, 1,000 per 5,068 original training images
    key: tuple[str, ...] | None = None  # None: the taxonomy's combination role
    confusion_task: str | None = None  # None: the taxonomy's confusion role
    confusion_pairs: int = 4  # most confused pairs taken from the reference's metrics
    pairs: tuple[tuple[str, str], ...] = ()  # explicit pairs (codes of confusion_task); override metrics
    metrics: str | None = None  # the reference's metrics.json on validation (celadon evaluate --split val)
    allow_test_metrics: bool = False  # accept a test-split metrics.json (test labels then steer the selection)
    seed: int = 0  # which images fill each tier
    extreme_target: int = 30  # per combination, at 1,000 images
    very_rare_target: int = 25  # per combination of 2-4 originals, at 1,000 images
    confusion_target: int = 25  # per pair
    moderate_target: int = 25  # per combination of 5-10 originals, at 1,000 images
    type_min: int = 100  # tier 5: every label of the key's last task (vessel type) at least this many, per 1,000
    glaze_min: int = 100  # tier 6: the same for the key's first task (glaze)


def with_roles(config, taxonomy):
    """A select or plan config with the taxonomy's roles filled in where it leaves them open (None)."""
    values = {}
    if getattr(config, "key", "") is None:
        values["key"] = taxonomy.combination
    if getattr(config, "confusion_task", "") is None:
        values["confusion_task"] = taxonomy.confusion
    return replace(config, **values)


def pairs_from_metrics(path: str, task: str, n: int, allow_test: bool = False) -> tuple[tuple[str, str], ...]:
    """The n most confused pairs of `task` in a validation metrics.json (test metrics are refused)."""
    from celadon.evaluate.run import load_decision_metrics

    metrics = load_decision_metrics(path, allow_test)
    if task not in metrics.get("tasks", {}):
        raise CeladonError(f"{path}: no metrics for task {task!r}; evaluate a model that has it")
    return tuple(tuple(p["pair"]) for p in metrics["tasks"][task]["confusion_pairs"][:n])


class _Picker:
    """Keeps the growing selection and the remaining budget."""

    def __init__(self, pool: pd.DataFrame, total: int, rng: np.random.Generator):
        self.pool, self.budget, self.rng = pool, total, rng
        self.chosen: dict[int, tuple[int, str]] = {}

    def take(self, candidates: pd.Index, n: int, tier: int, reason: str) -> int:
        free = [i for i in candidates if i not in self.chosen]
        original = [i for i in free if self.pool.at[i, "_original"]]
        copies = [i for i in free if not self.pool.at[i, "_original"]]
        ordered = list(self.rng.permutation(original)) + list(self.rng.permutation(copies))
        picked = ordered[: max(0, min(n, self.budget))]
        for index in picked:
            self.chosen[int(index)] = (tier, reason)
        self.budget -= len(picked)
        return len(picked)

    def count(self, column: str, value: str) -> int:
        return sum(1 for i in self.chosen if self.pool.at[i, column] == value)


def select_lora_set(manifest: Manifest, config: SelectConfig) -> pd.DataFrame:
    """The selected rows of `manifest` with `tier`, `tier_name` and `reason` columns."""
    config = with_roles(config, manifest.taxonomy)
    frame = manifest.frame
    for task in (*config.key, config.confusion_task):
        manifest.taxonomy.task(task)
    pool = frame.assign(_original=manifest.augmentation_seeds() < 0)
    pool = pool[pool["split"] == "train"] if "split" in pool else pool
    pool = pool[pool[list(config.key)].notna().all(axis=1)].copy()
    if pool.empty:
        raise CeladonError(f"{manifest.source}: no training rows with {', '.join(config.key)} labels to select from")
    pool["_key"] = manifest.combination_keys(config.key).loc[pool.index]
    originals = pool.loc[pool["_original"], "_key"].value_counts()
    scale = (config.total or round(PAPER_TOTAL * originals.sum() / PAPER_TRAIN_ORIGINALS)) / PAPER_TOTAL
    total = max(1, round(PAPER_TOTAL * scale))
    picker = _Picker(pool, total, np.random.default_rng(config.seed))

    def target(n: int) -> int:
        return max(1, round(n * scale))

    by_key = pool.groupby("_key").groups

    def rare(tier: int, low: int, high: int, n: int) -> None:
        for key in sorted(k for k, c in originals.items() if low <= c <= high):
            picker.take(by_key[key], target(n), tier, f"{key}: {originals[key]} original image(s)")

    rare(1, 1, 1, config.extreme_target)
    rare(2, 2, 4, config.very_rare_target)
    _confusion_tier(picker, pool, config, target(config.confusion_target))
    rare(4, 5, 10, config.moderate_target)
    balance = {5: (config.key[-1], config.type_min), 6: (config.key[0], config.glaze_min)}
    for tier, (task, minimum) in balance.items():
        if tier == 6 and len(config.key) == 1:
            continue  # one task: tier 5 balanced it already
        for code in sorted(pool[task].dropna().unique()):
            missing = target(minimum) - picker.count(task, code)
            if missing > 0:
                picker.take(pool.index[pool[task] == code], missing, tier, f"{task} {code} below {target(minimum)}")
    picker.take(pool.index, picker.budget, 7, "general fill")
    rows = sorted(picker.chosen, key=lambda i: (picker.chosen[i][0], i))
    selected = frame.loc[rows].copy()
    selected["tier"] = [picker.chosen[i][0] for i in rows]
    selected["tier_name"] = [TIERS[t - 1].format(balance.get(t, ("",))[0]) for t in selected["tier"]]
    selected["reason"] = [picker.chosen[i][1] for i in rows]
    return selected.reset_index(drop=True)


def _confusion_tier(picker: _Picker, pool: pd.DataFrame, config: SelectConfig, per_pair: int) -> None:
    pairs = config.pairs or (pairs_from_metrics(config.metrics, config.confusion_task, config.confusion_pairs,
                                                config.allow_test_metrics)
                             if config.metrics else ())
    task = config.confusion_task
    for a, b in pairs:
        rows_a, rows_b = pool.index[pool[task] == a], pool.index[pool[task] == b]
        # Prefer what both classes share in the key's other task: the paper's "white vs ivory white (bowl)".
        for other in [t for t in config.key if t != task][-1:]:
            shared = set(pool.loc[rows_a, other]) & set(pool.loc[rows_b, other])
            if shared:
                rows_a = rows_a[pool.loc[rows_a, other].isin(shared)]
                rows_b = rows_b[pool.loc[rows_b, other].isin(shared)]
        reason = f"confusion pair {a} vs {b}"
        picker.take(rows_a, per_pair - per_pair // 2, 3, reason)
        picker.take(rows_b, per_pair // 2, 3, reason)


def run_select(manifest: Manifest, out_dir: str | Path, config: SelectConfig) -> tuple[Path, pd.DataFrame]:
    """Write `selection.csv` and a per-tier summary; returns the path and the summary table."""
    config = with_roles(config, manifest.taxonomy)
    selected = select_lora_set(manifest, config)
    out_dir = Path(out_dir)
    path = write_manifest(manifest.with_frame(selected), out_dir / "selection.csv")
    keys = selected[list(config.key)].astype(str).agg("+".join, axis=1)
    summary = (selected.assign(key=keys).groupby(["tier", "tier_name"])
               .agg(combinations=("key", "nunique"), images=("key", "size")).reset_index())
    atomic_write_text(out_dir / "selection_summary.csv", summary.to_csv(index=False))
    write_run_info(out_dir, "synth select", asdict(config), config.seed)
    return path, summary

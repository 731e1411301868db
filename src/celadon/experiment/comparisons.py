"""Every arm against the baseline, with statistics that say what they cover.

Each *measure* (a metric of a task, a class group, a rare-combination group) gives one value per evaluation
stage. Per arm: the mean over seeds with a Student-t interval. Per arm vs baseline: the paired difference by
seed with its t-interval and test (McNemar, exact, on per-image top-1 pooled over seeds, for top-1 rows), a
crossed seeds x test-images bootstrap interval, Holm's adjustment over the comparison's family (the primary
endpoint's comparisons are one family, every other comparison the second), intervals at the level that agrees
with the adjusted p, the smallest effect the seeds could detect, and a verdict in words.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from celadon.errors import CeladonError
from celadon.evaluate.resample import ResampledPredictions
from celadon.evaluate.run import load_metrics
from celadon.evaluate.stats import (
    adjusted_level,
    detectable_effect,
    hierarchical_bootstrap,
    holm,
    image_weights,
    mcnemar_exact,
    paired_t,
    percentile_interval,
    seeds_needed,
    t_bounds,
    t_interval,
)
from celadon.experiment.stages import Stage

Replicates = Callable[[Stage, np.ndarray], np.ndarray]


@dataclass
class Measure:
    key: str  # "all/mean_f1_macro", "glaze/top1", "glaze/minority", "rare combinations/rare"
    table: str  # the results table its rows belong to
    label: dict  # the columns that name its row in that table
    value: Callable[[Stage], float]  # the point value of one evaluation
    replicates: Replicates | None = None  # the value under bootstrap image weights (None: not resampled)
    mcnemar_task: str | None = None  # top-1 of this task: tested per image with McNemar


SEEDS_COVER = ("Intervals cover the classifier's randomness (initialisation of the heads, sampling order, "
               "augmentation), which is what changes between seeds; the bootstrap intervals also resample the test "
               "images. The split, the LoRA and the synthetic images are fixed for the whole study.")


def verdict(comparison: dict, alpha: float) -> str:
    """Plain words that never claim more than the family-wise adjusted statistics allow."""
    if comparison["n"] < 2:
        return f"{comparison['n']} seed(s): too few for a test"
    significant = np.isfinite(comparison["p_adjusted"]) and comparison["p_adjusted"] < alpha
    bounds = [(comparison["adj_low"], comparison["adj_high"])]
    if comparison.get("adj_boot_low") is not None:
        bounds.append((comparison["adj_boot_low"], comparison["adj_boot_high"]))
    if significant and all(low > 0 for low, _ in bounds):
        return "better"
    if significant and all(high < 0 for _, high in bounds):
        return "worse"
    return "no clear change"


class Comparer:
    """Holds the study's evaluations, one set of bootstrap image weights, and the replicates computed so far."""

    def __init__(self, runs, resamples: int, seed: int, alpha: float, power: float):
        self.runs, self.alpha, self.power, self.seed = runs, alpha, power, seed
        self._predictions: dict = {}
        self._replicates: dict = {}
        first = next(iter(runs.evaluations.values()))
        self.weights = image_weights(len(self.predictions(first).paths), resamples, seed)

    def predictions(self, stage: Stage) -> ResampledPredictions:
        """An evaluation's predictions, read once; every arm must have been evaluated on the same images."""
        if stage.path not in self._predictions:
            loaded = ResampledPredictions.load(stage.path, list(load_metrics(stage.path)["tasks"]))
            if self._predictions and loaded.paths != next(iter(self._predictions.values())).paths:
                raise CeladonError(f"{stage.path}: evaluated on other images than the other arms; "
                                   "arms are compared on the same test images")
            self._predictions[stage.path] = loaded
        return self._predictions[stage.path]

    def replicates(self, stage: Stage, measure: Measure) -> np.ndarray:
        key = (stage.path, measure.key)
        if key not in self._replicates:
            self._replicates[key] = np.asarray(measure.replicates(stage, self.weights), dtype=float)
        return self._replicates[key]

    def seeds(self, arm: str) -> dict[int, Stage]:
        return {seed: stage for (name, seed), stage in sorted(self.runs.evaluations.items()) if name == arm}

    def arm_row(self, measure: Measure, arm: str) -> dict | None:
        stages = self.seeds(arm)
        values = {seed: measure.value(stage) for seed, stage in stages.items()}
        if not values or any(not np.isfinite(v) for v in values.values()):
            return None
        interval = t_interval(list(values.values()))
        return {**measure.label, "measure": measure.key, "arm": arm, "mean": interval.mean, "low": interval.low,
                "high": interval.high, "n": interval.n, "values": values}

    def compare(self, measure: Measure, arm_row: dict, base_row: dict) -> tuple[dict, np.ndarray | None]:
        """The unadjusted comparison of one arm with the baseline on one measure, and its bootstrap replicates."""
        test = paired_t(arm_row["values"], base_row["values"])
        shared = sorted(set(arm_row["values"]) & set(base_row["values"]))
        comparison = {"difference": test.difference, "ci_low": test.low, "ci_high": test.high, "n": test.n,
                      "sd": test.sd, "p": test.p, "method": "paired t over seeds"}
        arm_stages, base_stages = self.seeds(arm_row["arm"]), self.seeds(base_row["arm"])
        if measure.mcnemar_task and test.n >= 2:
            arm_only = base_only = 0
            for seed in shared:
                a = self.predictions(arm_stages[seed]).correct(measure.mcnemar_task)
                b = self.predictions(base_stages[seed]).correct(measure.mcnemar_task)
                arm_only, base_only = arm_only + int((a & ~b).sum()), base_only + int((b & ~a).sum())
            comparison |= {"p": mcnemar_exact(arm_only, base_only), "arm_only_correct": arm_only,
                           "baseline_only_correct": base_only,
                           "method": "exact McNemar on per-image top-1, pooled over seeds"}
        replicates = None
        if measure.replicates is not None and test.n >= 2:
            per_seed = np.stack([self.replicates(arm_stages[s], measure) - self.replicates(base_stages[s], measure)
                                 for s in shared], axis=1)
            replicates = hierarchical_bootstrap(per_seed, self.seed)
            comparison["boot_low"], comparison["boot_high"] = percentile_interval(replicates, 0.95)
        return comparison, replicates

    def finish(self, comparisons: list[tuple[dict, np.ndarray | None]]) -> None:
        """Holm over one family, then the intervals that agree with each adjusted p, and the verdicts."""
        adjusted = holm([c["p"] for c, _ in comparisons])
        m = sum(1 for c, _ in comparisons if np.isfinite(c["p"]))
        strictest = self.alpha / max(m, 1)  # Holm's first step: what the detectable effect is computed at
        for (comparison, replicates), p_adjusted in zip(comparisons, adjusted, strict=True):
            level = adjusted_level(comparison["p"], p_adjusted, self.alpha)
            comparison |= {"p_adjusted": float(p_adjusted), "family_size": m, "adj_level": level,
                           "alpha": self.alpha}
            low, high = t_bounds(comparison["difference"], comparison["sd"], comparison["n"], level)
            comparison |= {"adj_low": low, "adj_high": high}
            if replicates is not None:
                comparison["adj_boot_low"], comparison["adj_boot_high"] = percentile_interval(replicates, level)
            comparison["detectable"] = detectable_effect(comparison["sd"], comparison["n"], strictest, self.power)
            comparison["seeds_needed"] = seeds_needed(comparison["difference"], comparison["sd"], strictest,
                                                      self.power)
            comparison["verdict"] = verdict(comparison, self.alpha)


def compare_measures(comparer: Comparer, measures: list[Measure], primary: str) -> dict[str, list[dict]]:
    """Rows per results table: one per measure and arm, with the comparison to the baseline on non-baseline
    rows. The primary endpoint's comparisons form one Holm family, all other comparisons the other."""
    runs = comparer.runs
    baseline = runs.config.baseline
    tables: dict[str, list[dict]] = {}
    families: dict[str, list[tuple[dict, np.ndarray | None]]] = {"primary": [], "secondary": []}
    for measure in measures:
        base_row = comparer.arm_row(measure, baseline)
        for arm in runs.config.arms:
            row = comparer.arm_row(measure, arm.name) if arm.name != baseline else base_row
            if row is None:
                continue
            if arm.name != baseline and base_row is not None:
                comparison, replicates = comparer.compare(measure, row, base_row)
                family = "primary" if measure.key == primary else "secondary"
                comparison["family"] = family
                families[family].append((comparison, replicates))
                row["comparison"] = comparison
            tables.setdefault(measure.table, []).append(row)
    for family in families.values():
        comparer.finish(family)
    for rows in tables.values():
        for row in rows:
            row["values"] = {str(k): v for k, v in row["values"].items()}
            if "comparison" in row:
                row["verdict"] = row["comparison"]["verdict"]
    return tables

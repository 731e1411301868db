"""Every arm against the baseline, with statistics that say what they cover.

Each *measure* (a metric of a task, a class group, a rare-combination group) gives one value per evaluation
stage. Per arm: the mean over seeds with a Student-t interval. Per arm vs baseline: the paired difference by
seed with its t-interval and test (exact McNemar per seed on top-1 rows, as a description), an interval that
also covers the test images (seed variance + class-stratified test-image variance, Satterthwaite df), Holm's
adjustment over the comparison's family (the primary endpoint's comparisons are one family, every other
comparison the second), both intervals at the Holm-matched level, the smallest effect the seeds could detect
and the seeds a declared effect would need (sd pooled over arms), and a verdict in words.
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
    combined_interval,
    detectable_effect,
    holm,
    image_weights,
    images_needed,
    mcnemar_exact,
    paired_t,
    pooled_sd,
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


def seeds_cover(replicates: int) -> str:
    """What the intervals cover, in words, for a study with `replicates` synthesis replicates."""
    fixed = ("The split, the LoRA and the synthetic images are fixed for the whole study." if replicates == 1 else
             f"The split is fixed; the arms' seeds cycle over {replicates} LoRAs and image sets, so a mixed arm's "
             "interval also covers the generator's variance.")
    return ("Intervals cover the classifier's randomness (initialisation of the heads, sampling order, "
            "augmentation), which is what changes between seeds; the combined intervals also cover the test "
            "images (class-stratified resampling, Satterthwaite degrees of freedom). Adjusted intervals are at "
            "the Holm-matched level: each excludes zero exactly when its Holm-adjusted p is below alpha; they "
            f"are not simultaneous intervals. {fixed}")


def verdict(comparison: dict, alpha: float) -> str:
    """Plain words that never claim more than the family-wise adjusted statistics allow."""
    if comparison["n"] < 2:
        return f"{comparison['n']} seed(s): too few for a test"
    significant = np.isfinite(comparison["p_adjusted"]) and comparison["p_adjusted"] < alpha
    bounds = [(comparison["adj_low"], comparison["adj_high"])]
    if comparison.get("adj_combined_low") is not None:
        bounds.append((comparison["adj_combined_low"], comparison["adj_combined_high"]))
    if significant and all(low > 0 for low, _ in bounds):
        return "better"
    if significant and all(high < 0 for _, high in bounds):
        return "worse"
    return "no clear change"


class Comparer:
    """Holds the study's evaluations, one set of bootstrap image weights, and the replicates computed so far."""

    def __init__(self, runs, resamples: int, seed: int, alpha: float, power: float, effect: float = 0.02):
        from celadon.taxonomy import load_taxonomy

        self.runs, self.alpha, self.power, self.seed, self.effect = runs, alpha, power, seed, effect
        self._predictions: dict = {}
        self._replicates: dict = {}
        first = self.predictions(next(iter(runs.evaluations.values())))
        confusion = load_taxonomy(runs.config.taxonomy).confusion  # strata: its classes (unknown: one more)
        strata = first.truth.get(confusion) if confusion in first.tasks else None
        self.weights = image_weights(len(first.paths), resamples, seed, strata)

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
        method = "paired t over seeds" if test.sd != 0 else "exact sign-flip over seeds (every difference equal)"
        comparison = {"measure": measure.key, "difference": test.difference, "ci_low": test.low,
                      "ci_high": test.high, "n": test.n, "sd": test.sd, "p": test.p, "method": method}
        arm_stages, base_stages = self.seeds(arm_row["arm"]), self.seeds(base_row["arm"])
        if measure.mcnemar_task:  # per seed, a description: seeds share one test set, so pooling would overstate
            per_seed_p = {}
            for seed in shared:
                a = self.predictions(arm_stages[seed]).correct(measure.mcnemar_task)
                b = self.predictions(base_stages[seed]).correct(measure.mcnemar_task)
                per_seed_p[str(seed)] = mcnemar_exact(int((a & ~b).sum()), int((b & ~a).sum()))
            comparison["mcnemar_p_per_seed"] = per_seed_p
        images = None
        if measure.replicates is not None and test.n >= 2:
            per_seed = np.stack([self.replicates(arm_stages[s], measure) - self.replicates(base_stages[s], measure)
                                 for s in shared], axis=1)
            mean = per_seed.mean(axis=1)  # one image resample shared by every seed: the test set's noise
            variance = float(np.var(mean[np.isfinite(mean)], ddof=1)) if np.isfinite(mean).sum() > 1 else np.nan
            differences = [arm_row["values"][s] - base_row["values"][s] for s in shared]
            images = (differences, variance, self.weights.shape[1] - 1)
            low, high, df = combined_interval(*images)
            comparison |= {"image_sd": float(np.sqrt(variance)) if np.isfinite(variance) else None,
                           "combined_low": low, "combined_high": high, "combined_df": df}
        return comparison, images

    def finish(self, comparisons: list[tuple[dict, tuple | None]]) -> None:
        """Holm over one family, then both intervals at the Holm-matched level, power for the declared effect
        (sd pooled over the arms of each measure), and the verdicts."""
        adjusted = holm([c["p"] for c, _ in comparisons])
        m = sum(1 for c, _ in comparisons if np.isfinite(c["p"]))
        strictest = self.alpha / max(m, 1)  # Holm's first step: what the detectable effect is computed at
        pooled, image_variance = {}, {}
        for key in {c["measure"] for c, _ in comparisons}:
            same = [c for c, _ in comparisons if c["measure"] == key]
            pooled[key] = pooled_sd([c["sd"] for c in same], [c["n"] for c in same])
            variances = [c["image_sd"] ** 2 for c in same if c.get("image_sd") is not None]
            image_variance[key] = float(np.mean(variances)) if variances else 0.0  # 0: seeds only
        test_images = self.weights.shape[1]
        for (comparison, images), p_adjusted in zip(comparisons, adjusted, strict=True):
            level = adjusted_level(comparison["p"], p_adjusted, self.alpha)
            comparison |= {"p_adjusted": float(p_adjusted), "family_size": m, "adj_level": level,
                           "alpha": self.alpha}
            low, high = t_bounds(comparison["difference"], comparison["sd"], comparison["n"], level)
            comparison |= {"adj_low": low, "adj_high": high}
            if images is not None:
                comparison["adj_combined_low"], comparison["adj_combined_high"], _ = combined_interval(*images, level)
            sd, variance = pooled[comparison["measure"]], image_variance[comparison["measure"]]
            power = dict(alpha=strictest, power=self.power)
            comparison |= {"sd_pooled": sd, "image_sd_pooled": float(np.sqrt(variance)), "effect": self.effect,
                           "test_images": test_images,
                           "detectable": detectable_effect(sd, comparison["n"], image_variance=variance,
                                                           image_df=test_images - 1, **power),
                           "seeds_needed": seeds_needed(self.effect, sd, image_variance=variance,
                                                        image_df=test_images - 1, **power),
                           "images_needed": images_needed(self.effect, sd, comparison["n"], variance,
                                                          test_images, **power) if variance else None}
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


def against_controls(runs, tables: dict[str, list[dict]], primary: str) -> dict[str, dict]:
    """Per arm that draws a plan, on the primary endpoint: its gain as a share of its oracle's (the oracle arm
    of the same plan, ratio and tasks: the most perfect images could give), with Fieller's 95% interval where
    the oracle's gain is clear, and its paired difference to its replay arm (the same photos shown again: what
    is left for new images to add). Secondary: unadjusted, for reading a generator against its bounds."""
    from celadon.evaluate.stats import paired_t, share_of_gain
    from celadon.experiment.config import generator_method

    values = {r["arm"]: {int(s): v for s, v in r["values"].items()}
              for rows in tables.values() for r in rows if r["measure"] == primary}
    base = values.get(runs.config.baseline)
    if base is None:
        return {}
    synthesis = runs.config.synthesis

    def method(arm) -> str:
        return generator_method(synthesis, synthesis.generators.get(arm.generator, {}))

    drawn = [a for a in runs.config.arms if a.plan and a.name in values]
    found: dict[str, dict] = {}
    for arm in drawn:
        like = [a for a in drawn if (a.plan, a.ratio, a.tasks) == (arm.plan, arm.ratio, arm.tasks)]
        oracle = next((a for a in like if method(a) == "oracle"), None)
        replay = next((a for a in like if method(a) == "replay"), None)
        gain = {s: v - base[s] for s, v in values[arm.name].items() if s in base}
        row: dict = {"generator": method(arm), "gain": float(np.mean(list(gain.values())))}
        if oracle is not None and oracle is not arm:
            oracle_gain = {s: v - base[s] for s, v in values[oracle.name].items() if s in base}
            share = share_of_gain(gain, oracle_gain)
            row |= {"oracle": oracle.name, "oracle_gain": float(np.mean(list(oracle_gain.values()))),
                    "share": share.share if share.low is not None else None, "share_low": share.low,
                    "share_high": share.high, "share_defined": share.low is not None}
        if replay is not None and replay is not arm:
            test = paired_t(values[arm.name], values[replay.name])
            row |= {"replay": replay.name, "vs_replay": test.difference, "vs_replay_low": test.low,
                    "vs_replay_high": test.high, "vs_replay_p": test.p}
        found[arm.name] = row
    return found


def declared_effect_reach(comparison: dict) -> str:
    """What the run could detect and what detecting the declared effect would take, in words, for the report
    and the console (results written before the test images entered the power figures read as seeds only)."""
    images = comparison.get("test_images") if comparison.get("image_sd_pooled") else None  # images counted
    where = " (seeds and test images, sd pooled over arms)" if images else " (sd pooled over arms)"
    text = f"smallest detectable effect ±{comparison['detectable']:.3f}{where}"
    effect, need = comparison.get("effect"), comparison.get("seeds_needed")
    if not effect:
        return text
    if need:
        return text + f"; about {need} seeds would detect the declared effect of {effect:.3f}"
    if not images:
        return text + f"; more than 1,000 seeds would be needed for the declared effect of {effect:.3f}"
    more, seeds = comparison.get("images_needed"), comparison["n"]
    at = (f"{seeds} seeds would on about {more:,} test images" if more else
          f"{seeds} seeds would not on any test set: their own variance is too large")
    return (text + f"; no number of seeds up to 1,000 detects the declared effect of {effect:.3f} on these "
            f"{images} test images, {at}")

"""The study's tables from the stage outputs: per-task results (paper Table 14), minority/majority (Table 15),
rare label combinations, each with the arm-vs-baseline statistics of `comparisons.py`; confusion-pair changes
(Table 17), every generator on the compare plan (Table 6), QC, imbalance before/after (Tables 10-12) and
validation curves (Table 13)."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from celadon.classify.metrics import compare_confusion_pairs
from celadon.evaluate.run import load_metrics
from celadon.experiment.comparisons import Measure, against_controls, compare_measures, seeds_cover
from celadon.experiment.stages import Stage
from celadon.taxonomy import load_taxonomy

METRICS = ("f1_macro", "top1", "top5", "f1_weighted")
RESAMPLED = ("f1_macro", "top1", "f1_weighted")  # top-5 needs scores, which predictions.csv does not keep
GROUPS = ("minority", "majority")


@functools.lru_cache(maxsize=512)
def _metrics(folder: Path) -> dict:
    return load_metrics(folder)  # stage folders are content-addressed: a complete one never changes


def _number(value) -> float:
    return float("nan") if value is None else value  # metrics.json stores an undefined value as null


def _tasks(runs) -> list[str]:
    return list(_metrics(next(iter(runs.evaluations.values())).path)["tasks"])


def _groups(stage: Stage, task: str) -> dict[str, set[str]]:
    split = _metrics(stage.path)["tasks"][task].get("minority_majority", {})
    return {g: set(split.get(g, {}).get("classes", [])) for g in GROUPS}


def _task_scores(comparer_cache: dict, stage: Stage, task: str, weights: np.ndarray, predictions) -> dict:
    key = (stage.path, task, weights.shape)
    if key not in comparer_cache:
        comparer_cache[key] = predictions(stage).task_scores(task, weights, _groups(stage, task))
    return comparer_cache[key]


def rare_groups(runs) -> tuple[str, dict[str, set[tuple]], int]:
    """The plans' definition of rare: a combination of every task's label, counted over the real *training*
    originals, is rare with 1 to `rare_max` of them (what the plans generate), common above, unseen at 0."""
    from celadon.data.manifest import read_manifest
    from celadon.synth.plan import PlanConfig

    plans = [runs.config.synthesis.plans[a.plan] for a in runs.config.arms if a.plan]
    rare_max = int(((plans[0] if plans else None) or {}).get("rare_max", PlanConfig.rare_max))
    manifest = read_manifest(runs.split.info["splits"], load_taxonomy(runs.config.taxonomy))
    return "+".join(manifest.tasks), combination_groups(manifest, rare_max), rare_max


def combination_groups(manifest, rare_max: int) -> dict[str, set[tuple]]:
    """The training originals' label combinations (one tuple of every task's label, as `_rare_masks` reads
    test images), rare with 1 to `rare_max` originals, common above."""
    frame = manifest.frame[(manifest.frame["split"] == "train") & (manifest.augmentation_seeds() < 0)]
    counts = frame.dropna(subset=manifest.tasks).groupby(manifest.tasks).size()
    # pandas keys a one-task grouping by the bare label: as a tuple it matches the images' keys
    keys = [key if isinstance(key, tuple) else (key,) for key in counts.index]
    return {"rare": {k for k, v in zip(keys, counts, strict=True) if v <= rare_max},
            "common": {k for k, v in zip(keys, counts, strict=True) if v > rare_max}}


def _rare_masks(predictions, tasks: list[str], groups: dict[str, set[tuple]]) -> dict[str, np.ndarray]:
    """Per group (rare, common, unseen), which evaluated images carry a combination of that group."""
    keys = list(zip(*(predictions.labels(t) for t in tasks), strict=True))
    complete = np.array([all(key) for key in keys])
    rare = np.array([k in groups["rare"] for k in keys]) & complete
    common = np.array([k in groups["common"] for k in keys]) & complete
    return {"rare": rare, "common": common, "unseen": complete & ~rare & ~common}


def measures(runs, comparer_cache: dict, predictions, rare: tuple) -> list[Measure]:
    """Every measure the results tables compare, in table order; `rare` is `rare_groups(runs)`."""
    tasks = _tasks(runs)
    taxonomy = load_taxonomy(runs.config.taxonomy)
    scores = functools.partial(_task_scores, comparer_cache, predictions=predictions)

    def mean_f1(stage: Stage, weights: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            per_task = np.vstack([scores(stage, t, weights)["f1_macro"] for t in tasks])
            return np.nanmean(np.where(np.isfinite(per_task), per_task, np.nan), axis=0)

    out = [Measure("all/mean_f1_macro", "table14", {"task": "all", "metric": "mean_f1_macro"},
                   lambda st: _number(_metrics(st.path)["mean_f1_macro"]), mean_f1)]
    for task in tasks:
        for metric in METRICS:
            if metric == "top5" and len(taxonomy.task(task).codes) <= 5:
                continue  # every class is in the top 5: a constant, not a measure
            out.append(Measure(f"{task}/{metric}", "table14", {"task": task, "metric": metric},
                               lambda st, t=task, k=metric: _number(_metrics(st.path)["tasks"][t][k]),
                               (lambda st, w, t=task, k=metric: scores(st, t, w)[k]) if metric in RESAMPLED else None,
                               task if metric == "top1" else None))
    for task in tasks:
        for group in GROUPS:
            out.append(Measure(f"{task}/{group}", "table15", {"task": task, "group": group},
                               lambda st, t=task, g=group: _number(_metrics(st.path)["tasks"][t]["minority_majority"]
                                                                   [g]["f1_mean"]),
                               lambda st, w, t=task, g=group: scores(st, t, w)[g]))
    key, groups, rare_max = rare
    names = {"rare": f"rare (1–{rare_max} in training)", "common": f"common (>{rare_max} in training)",
             "unseen": "unseen in training"}
    masks: dict = {}

    def accuracy(stage: Stage, weights: np.ndarray, group: str) -> np.ndarray:
        loaded = predictions(stage)
        if stage.path not in masks:
            masks[stage.path] = _rare_masks(loaded, [t for t in key.split("+") if t in loaded.tasks], groups)
        return loaded.group_accuracy(masks[stage.path][group], weights)

    for group in ("rare", "common", "unseen"):
        out.append(Measure(f"rare combinations/{group}", "rare_combinations", {"group": names[group]},
                           lambda st, g=group: float(accuracy(st, np.ones((1, len(predictions(st).paths))), g)[0]),
                           lambda st, w, g=group: accuracy(st, w, g)))
    return out


def comparison_tables(runs, rare: tuple) -> dict[str, list[dict]]:
    """Tables 14, 15 and the rare-combination table, every arm compared with the baseline."""
    from celadon.experiment.comparisons import Comparer

    s = runs.config.statistics
    comparer = Comparer(runs, s.resamples, s.seed, s.alpha, s.power, s.effect)
    return compare_measures(comparer, measures(runs, {}, comparer.predictions, rare), s.primary)


def primary_endpoint(runs, tables: dict[str, list[dict]]) -> dict:
    """The comparison the study is about, per arm, with what the seeds could and could not detect."""
    s = runs.config.statistics
    rows = [r for rows in tables.values() for r in rows if r["measure"] == s.primary]
    return {"endpoint": s.primary, "alpha": s.alpha, "power": s.power,
            "covers": seeds_cover(runs.config.synthesis.replicates),
            "arms": {r["arm"]: {"mean": r["mean"], "low": r["low"], "high": r["high"], "n": r["n"],
                                **({"comparison": r["comparison"]} if "comparison" in r else {})} for r in rows}}


def _summed_pairs(runs, arm: str) -> dict:
    """Confusion-pair counts summed over an arm's seeds, in the shape compare_confusion_pairs reads."""
    tasks: dict[str, dict[tuple, int]] = {}
    for (name, _), stage in runs.evaluations.items():
        if name != arm:
            continue
        for task, metrics in _metrics(stage.path)["tasks"].items():
            for pair in metrics["confusion_pairs_all"]:
                key = tuple(pair["pair"])
                tasks.setdefault(task, {})[key] = tasks.setdefault(task, {}).get(key, 0) + pair["count"]
    return {"tasks": {t: {"confusion_pairs_all": [{"pair": list(k), "count": c} for k, c in pairs.items()]}
                      for t, pairs in tasks.items()}}


def confusion_pair_table(runs, top: int = 8) -> dict[str, dict]:
    """Table 17: per arm and task, how the counts of the most confused pairs changed (summed over seeds)."""
    before = _summed_pairs(runs, runs.config.baseline)
    return {arm.name: compare_confusion_pairs(before, _summed_pairs(runs, arm.name), top)
            for arm in runs.config.arms if arm.name != runs.config.baseline and arm.name in
            {a for a, _ in runs.evaluations}}


def validation_curves(runs) -> dict[str, list[float]]:
    """Table 13: validation mean macro-F1 per epoch, averaged over each arm's seeds."""
    curves: dict[str, list[list[float]]] = {}
    for (arm, _), stage in runs.trainings.items():
        history = pd.read_csv(stage.path / "history.csv")
        curves.setdefault(arm, []).append(history["val_mean_f1_macro"].tolist())
    return {arm: [float(np.mean([c[i] for c in runs_ if i < len(c)])) for i in range(max(map(len, runs_)))]
            for arm, runs_ in curves.items()}


def _json(path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def table6(runs, qc_folders: dict[str, Path], plan_table: str | Path) -> dict:
    """The paper's Table 6 for QC runs on one plan, one column per generator, with the judge on *real
    validation* photos of the same combinations (of the taxonomy's combination role), weighted to the plan's
    mix of them: what synthetic images as convincing as real ones would score. Relative fidelity divides the
    two over the items whose combination has real photos (1.0 = as convincing to the judge as real photos),
    with a bootstrap interval (celadon.evaluate.fidelity). Validation, like every reading that steers
    synthesis."""
    from celadon.evaluate.fidelity import agreement, item_clusters, relative_fidelity, standardised_real
    from celadon.experiment.judge import judge_readings
    from celadon.synth.qc import compare_qc

    rows = {str(k): {n: None if pd.isna(v) else v for n, v in values.items()}  # a row some runs lack: None
            for k, values in compare_qc(qc_folders).to_dict("index").items()}
    real = judge_readings(runs)
    plan = pd.read_csv(plan_table, dtype=str, keep_default_na=False)
    keys = [k for k in load_taxonomy(runs.config.taxonomy).combination if k in plan and k in real]
    items = {name: pd.read_csv(Path(folder) / "qc.csv", dtype=str, keep_default_na=False)
             for name, folder in qc_folders.items()}
    combos = set(plan[keys].itertuples(index=False, name=None))
    rows["images"]["real photos"] = sum(c in combos for c in real[keys].itertuples(index=False, name=None))
    for row in [r for r in rows if r.startswith("label fidelity ")]:
        tasks = row.removeprefix("label fidelity ").split("+")
        rows[row]["real photos"] = standardised_real(plan, real, keys, tasks)
        relative = {name: relative_fidelity(frame, real, keys, tasks, clusters=item_clusters(frame, keys))
                    for name, frame in items.items()}
        metric = row.replace("label fidelity", "relative fidelity")
        rows[metric] = {g: r.relative for g, r in relative.items()}
        rows[f"{metric}, 95% cluster interval"] = {g: list(r.interval) if r.interval else None
                                                   for g, r in relative.items()}
        if "+" not in row:  # the same items for every task; said once
            rows["items compared (their combination has real photos)"] = {g: r.items for g, r in relative.items()}
            rows["clusters resampled (items sharing a source or a combination)"] = {
                g: r.clusters for g, r in relative.items()}
    summaries = {name: _json(Path(folder) / "qc_summary.json") for name, folder in qc_folders.items()}
    for row in ("copy_of_source", "no_verified_task"):
        counts = {name: summary["reasons"].get(row) for name, summary in summaries.items()}
        if any(counts.values()):
            rows[f"QC fails: {row.replace('_', ' ')}"] = counts
    # an independent judge gates QC; what gating on the reference would have lost: labels the judge confirms
    # that the reference (trained on the generators' sources) reads otherwise
    second = {name: summary.get("second_reader") or {} for name, summary in summaries.items()}
    for task in sorted({task for counts in second.values() for task in counts}):
        rows[f"{task} labels the judge confirms, the reference misreads"] = {
            name: counts.get(task, {}).get("second_reader_misreads") for name, counts in second.items()}
    rows |= _read_by_the_reference(runs, items, keys, [r.removeprefix("label fidelity ").split("+")
                                                       for r in rows if r.startswith("label fidelity ")])
    # label fidelity is only as good as the judge: its top-1 on real validation photos (cross-fitted: pooled)
    tasks = [c.removeprefix("pred_") for c in real if c.startswith("pred_") and c.removeprefix("pred_") in real]
    return {"rows": rows, "judge_real_top1": {t: float(agreement(real, [t]).mean()) for t in tasks}}


def _read_by_the_reference(runs, items: dict[str, pd.DataFrame], keys: list[str], groups: list[list[str]]) -> dict:
    """Beside an independent judge, the same relative fidelity as the reference reads it (QC's second reader
    on the items, the reference on validation photos): old judge and new from one run."""
    from celadon.evaluate.fidelity import relative_fidelity
    from celadon.evaluate.resample import read_predictions

    read = {name: frame.drop(columns=[c for c in frame if c.startswith("pred_")]).rename(
        columns=lambda c: "pred_" + c.removeprefix("second_pred_") if c.startswith("second_pred_") else c)
        for name, frame in items.items() if any(c.startswith("second_pred_") for c in frame)}
    if not read:
        return {}
    real = read_predictions(runs.reference_eval.path)
    rows = {}
    for tasks in groups:
        if not all(f"pred_{t}" in frame for frame in read.values() for t in tasks):
            continue
        rows[f"relative fidelity {'+'.join(tasks)}, read by the reference (not independent)"] = {
            name: relative_fidelity(frame, real, keys, tasks, n_resamples=0).relative for name, frame in read.items()}
    return rows


def training_budgets(runs) -> dict[str, dict]:
    """Per arm and seed: optimizer steps, the real and synthetic images presented, and per task the labelled
    presentations (`labels`: what each task's loss saw), as trained."""
    budgets: dict[str, dict] = {}
    for (arm, seed), stage in sorted(runs.trainings.items()):
        info = stage.info
        budgets.setdefault(arm, {})[str(seed)] = {k: info.get(k) for k in (
            "optimizer_steps", "real_presentations", "synthetic_presentations", "epochs", "best_epoch", "mixing")}
        budgets[arm][str(seed)]["labels"] = {k.removeprefix("labels_"): v for k, v in info.items()
                                             if k.startswith("labels_")}
    return budgets


def _relative(runs, path: str | Path) -> str:
    return os.path.relpath(Path(path).resolve(), Path(runs.out).resolve())


def report_files(runs) -> dict:
    """The files the report shows, relative to the study folder: with results.json, all `celadon report`
    needs to rebuild report.html (a copied or moved study folder keeps them)."""
    files: dict = {"imbalance": {name: _relative(runs, stage.path) for name, stage in runs.imbalance.items()},
                   "split_summary": _relative(runs, Path(runs.split.info["splits"]).parent / "split_summary.csv")}
    if runs.lora is not None:
        log, samples = runs.lora.path / "train_log.csv", sorted((runs.lora.path / "samples").glob("*.png"))
        files["lora_log"] = _relative(runs, log) if log.exists() else None
        files["lora_samples"] = _relative(runs, samples[-1]) if samples else None
    compare = runs.config.synthesis.compare_plan
    shown = {name: runs.generations[f"{compare}/{name}"].info["table"] for name in runs.config.synthesis.generators
             if f"{compare}/{name}" in runs.generations}
    if len(shown) > 1:
        from celadon.report.figures import comparison_strip
        from celadon.runinfo import atomic_write_bytes

        strip = Path(runs.out) / "figures" / f"generators_real_{compare}.png"
        atomic_write_bytes(strip, comparison_strip(shown, runs.split.info["splits"],
                                                   load_taxonomy(runs.config.taxonomy).combination))
        files["strip"] = _relative(runs, strip)
    if runs.tsne is not None:
        files["tsne"] = _relative(runs, runs.tsne.info["plot"])
    seed, config = runs.config.seeds[0], runs.config
    shown = (config.baseline, *[a.name for a in config.arms if a.name != config.baseline][-1:])
    files["confusion"] = {"seed": seed, "arms": {
        arm: [_relative(runs, p) for p in sorted(runs.evaluations[arm, seed].path.glob("confusion_*.png"))]
        for arm in shown if (arm, seed) in runs.evaluations}}
    return files


def collect_results(runs) -> dict:
    from celadon.runinfo import versions

    results: dict = {"name": runs.config.name, "seeds": runs.config.seeds, "baseline": runs.config.baseline,
                     "endpoint_split": runs.config.endpoint_split,  # val: a development study, test unread
                     "arms": [a.name for a in runs.config.arms], "skipped_arms": runs.skipped,
                     "config": json.loads(json.dumps(dataclasses.asdict(runs.config))), "versions": versions(),
                     "combination": list(load_taxonomy(runs.config.taxonomy).combination),
                     "files": report_files(runs)}
    if runs.evaluations:
        rare = rare_groups(runs)
        tables = comparison_tables(runs, rare)
        key, _, rare_max = rare
        results |= {"primary": primary_endpoint(runs, tables), **tables, "table17": confusion_pair_table(runs),
                    "controls": against_controls(runs, tables, runs.config.statistics.primary),
                    "rare_definition": {"combination": key, "rare_max": rare_max,
                                        "counted_on": "real training originals (what the plans count)"},
                    "validation_curves": validation_curves(runs), "budgets": training_budgets(runs)}
    results["qc"] = {key: _json(stage.path / "qc_summary.json") for key, stage in runs.qc.items()}
    if runs.judge_eval is not None:
        from celadon.experiment.judge import describe_judge

        results["judge"] = describe_judge(runs)
    results["curated"] = {key: _json(stage.path / "curate.json") for key, stage in runs.curated.items()}
    compare = runs.config.synthesis.compare_plan
    from celadon.experiment.synthesis import table6_generators

    generators = {name: runs.qc[f"{compare}/{name}"].path for name in table6_generators(runs.config.synthesis)
                  if f"{compare}/{name}" in runs.qc}
    if len(generators) > 1:
        results["table6"] = table6(runs, generators, runs.plans[compare].info["table"]) | {"plan": compare}
    if runs.sweep:
        name = runs.config.synthesis.sweep["generator"]
        results["sweep"] = table6(runs, {f"{name} s={k:g}": stage.path for k, stage in sorted(runs.sweep.items())},
                                  runs.plans[compare].info["table"]) | {"generator": name, "plan": compare}
    results["imbalance"] = {name: _json(stage.path / "imbalance.json") for name, stage in runs.imbalance.items()}
    return results

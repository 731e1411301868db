"""The study's tables from the stage outputs: per-task results with bootstrap CIs and paired differences
(paper Table 14), minority/majority (Table 15), rare label combinations, confusion-pair changes (Table 17),
vanilla vs LoRA (Table 6), QC, imbalance before/after (Tables 10-12) and validation curves (Table 13)."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from celadon.evaluate.metrics import compare_confusion_pairs
from celadon.evaluate.run import load_metrics
from celadon.evaluate.stats import Interval, bootstrap_ci, paired_difference
from celadon.experiment.stages import Stage

METRICS = ("f1_macro", "top1", "top5", "f1_weighted")
RARE_MAX = 10  # a glaze x type combination with at most this many training originals is rare (as in plans)


def _interval(interval: Interval) -> dict:
    return {"mean": interval.mean, "low": interval.low, "high": interval.high, "n": interval.n}


def verdict(delta: Interval) -> str:
    """Plain words for a paired difference, so the report never claims more than the interval allows."""
    if delta.n < 3:
        return f"{delta.n} seed(s): too few for an interval"
    if delta.low > 0:
        return "better (CI above 0)"
    if delta.high < 0:
        return "worse (CI below 0)"
    return "no clear change (CI includes 0)"


def _per_seed(runs, arm: str, value: Callable[[Stage], float]) -> dict[int, float]:
    return {seed: value(stage) for (name, seed), stage in runs.evaluations.items() if name == arm}


def _rows(runs, label: dict, value: Callable[[Stage], float]) -> list[dict]:
    """One row per arm: `value` of each of its evaluation stages, mean [CI] over seeds, and the paired
    difference to the baseline."""
    baseline = runs.config.baseline
    rows = []
    base = _per_seed(runs, baseline, value)
    for arm in runs.config.arms:
        values = _per_seed(runs, arm.name, value)
        if not values or any(np.isnan(v) for v in values.values()):
            continue
        row = {**label, "arm": arm.name, **_interval(bootstrap_ci(list(values.values())))}
        if arm.name != baseline and base:
            delta = paired_difference(values, base)
            row |= {"delta": _interval(delta), "verdict": verdict(delta)}
        rows.append(row)
    return rows


def _metric(get: Callable[[dict], float]) -> Callable[[Stage], float]:
    """A value of an evaluation stage's metrics.json (each file read once)."""
    return lambda stage: get(_metrics(stage.path))


@functools.lru_cache(maxsize=512)
def _metrics(folder: Path) -> dict:
    return load_metrics(folder)  # stage folders are content-addressed: a complete one never changes


def _tasks(runs) -> list[str]:
    return list(_metrics(next(iter(runs.evaluations.values())).path)["tasks"])


def results_table(runs) -> list[dict]:
    """Table 14: every metric of every task per arm, mean [95% CI] over seeds, and the paired difference."""
    rows = _rows(runs, {"task": "all", "metric": "mean_f1_macro"}, _metric(lambda m: m["mean_f1_macro"]))
    for task in _tasks(runs):
        for metric in METRICS:
            rows += _rows(runs, {"task": task, "metric": metric},
                          _metric(lambda m, t=task, k=metric: m["tasks"][t][k]))
    return rows


def minority_majority_table(runs) -> list[dict]:
    """Table 15: mean F1 of minority vs majority classes per task and arm."""
    rows = []
    for task in _tasks(runs):
        for group in ("minority", "majority"):
            rows += _rows(runs, {"task": task, "group": group},
                          _metric(lambda m, t=task, g=group: m["tasks"][t]["minority_majority"][g]["f1_mean"]))
    return rows


def _predictions(folder: Path) -> pd.DataFrame:
    """An evaluate stage's predictions.csv: true and predicted labels as text, "" where a label is unknown."""
    return pd.read_csv(folder / "predictions.csv", keep_default_na=False, dtype=str)


def _rare_accuracy(predictions: pd.DataFrame, common: set[str], tasks: list[str]) -> dict[str, float]:
    key = predictions["glaze"].astype(str) + "|" + predictions["type"].astype(str)
    result = {}
    for group, mask in (("rare", ~key.isin(common)), ("common", key.isin(common))):
        scores = [float((predictions.loc[mask & (predictions[t] != ""), t] ==
                         predictions.loc[mask & (predictions[t] != ""), f"pred_{t}"]).mean())
                  for t in tasks if (mask & (predictions[t] != "")).any()]
        result[group] = float(np.mean(scores)) if scores else float("nan")
    return result


def rare_combination_table(runs) -> list[dict]:
    """Mean top-1 accuracy over tasks on test images whose glaze x type combination is rare in training."""
    splits = pd.read_csv(runs.split.info["splits"], keep_default_na=False)
    if not {"glaze", "type"} <= set(splits.columns):  # another taxonomy: no glaze x type combination
        return []
    train = splits[splits["split"] == "train"]
    counts = (train["glaze"].astype(str) + "|" + train["type"].astype(str)).value_counts()
    common = {k for k, v in counts.items() if v > RARE_MAX}  # rare: the rest, unseen combinations included
    cache: dict = {}

    def accuracy(stage, group: str) -> float:
        if stage.path not in cache:
            predictions = _predictions(stage.path)
            tasks = [c for c in predictions.columns if f"pred_{c}" in predictions.columns]
            cache[stage.path] = _rare_accuracy(predictions, common, tasks)
        return cache[stage.path][group]

    return [row for group in ("rare", "common")
            for row in _rows(runs, {"group": f"rare (≤{RARE_MAX} training images)" if group == "rare" else group},
                             lambda stage, g=group: accuracy(stage, g))]


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


def judge_on_real(runs, plan_table: str | Path, rows: list[str]) -> dict[str, float]:
    """The reference classifier's label fidelity on *real* test photos of the plan's glaze x type combinations:
    what synthetic images as convincing as real ones would score in Table 6 (a judge that misreads real photos
    cannot vouch for synthetic ones)."""
    predictions = _predictions(runs.reference_eval.path)
    plan = pd.read_csv(plan_table, dtype=str, keep_default_na=False)
    keys = [k for k in ("glaze", "type") if k in plan and k in predictions]  # a custom taxonomy may lack them
    combos = set(plan[keys].itertuples(index=False, name=None))
    real = predictions[[c in combos for c in predictions[keys].itertuples(index=False, name=None)]]
    column: dict[str, float] = {"images": float(len(real))}
    for row in rows:
        tasks = row.removeprefix("label fidelity ").split("+")
        labelled = real[(real[tasks] != "").all(axis=1)]
        if len(labelled):
            agree = labelled[tasks].to_numpy() == labelled[[f"pred_{t}" for t in tasks]].to_numpy()
            column[row] = float(agree.all(axis=1).mean())
    return column


def collect_results(runs) -> dict:
    from celadon.synth.qc import compare_qc

    results: dict = {"name": runs.config.name, "seeds": runs.config.seeds, "baseline": runs.config.baseline,
                     "arms": [a.name for a in runs.config.arms], "skipped_arms": runs.skipped}
    if runs.evaluations:
        results |= {"table14": results_table(runs), "table15": minority_majority_table(runs),
                    "rare_combinations": rare_combination_table(runs), "table17": confusion_pair_table(runs),
                    "validation_curves": validation_curves(runs)}
    results["qc"] = {key: _json(stage.path / "qc_summary.json") for key, stage in runs.qc.items()}
    compare = runs.config.synthesis.compare_plan
    if compare and f"{compare}/vanilla" in runs.qc:
        table = compare_qc({"vanilla": runs.qc[f"{compare}/vanilla"].path, "lora": runs.qc[f"{compare}/lora"].path})
        judge = _metrics(runs.reference_eval.path)["tasks"]
        rows = {str(k): v for k, v in table.to_dict("index").items()}
        fidelity = [r for r in rows if r.startswith("label fidelity ")]
        real = judge_on_real(runs, runs.plans[compare].info["table"], fidelity)
        for row, values in rows.items():
            values["real photos"] = real.get(row)  # None where it has no meaning (FID, QC pass rate)
        results["table6"] = {"plan": compare, "rows": rows,
                             # label fidelity is only as good as the judge: its top-1 on real test photos
                             "judge_real_top1": {t: judge[t]["top1"] for t in judge}}
    results["imbalance"] = {name: _json(stage.path / "imbalance.json") for name, stage in runs.imbalance.items()}
    return results

"""`celadon run CONFIG` and `celadon demo` (the `demo` preset): the whole study from a config, with the wall
time of every stage and the results table at the end; `--dry-run` prints its plan instead (`plan_study`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from celadon.experiment.comparisons import declared_effect_reach
from celadon.experiment.config import StudyConfig, load_study
from celadon.experiment.runner import Study
from celadon.experiment.stages import Stage
from celadon.runinfo import write_json


def run_study(source: str, overrides: dict[str, Any] | None = None, settings: list[str] | None = None,
              progress: bool = True) -> Path:
    """`celadon run SOURCE` (a YAML or a preset name); `celadon demo` is `run_study("demo")`."""
    config = load_study(source, overrides, settings)
    report = execute_study(config, progress)
    print_summary(Path(config.out))
    print(f"\nreport: {report.resolve()}")
    return report


def plan_study(config: StudyConfig) -> tuple[list[Stage], list[str]]:
    """What `config` would run, stage by stage, without running or writing anything: (stages, notes)."""
    study = Study(config, progress=False, dry_run=True)
    study.run()
    return study.stages.plan(), study.notes


def execute_study(config: StudyConfig, progress: bool = True) -> Path:
    """Run (or resume) every stage, then write results and the report; returns report.html."""
    from celadon.device import resolve_device
    from celadon.experiment.results import collect_results
    from celadon.report.html import write_report

    for device in (config.device, *config.devices, *config.synthesis.generate.get("devices", ())):
        resolve_device(device)  # a missing GPU stops the study before its first stage, not after
    began = time.perf_counter()
    study = Study(config, progress)
    runs = study.run()
    results = collect_results(runs)
    results["stages"] = [{"stage": s.label, "folder": s.path.name, "reused": s.reused, "seconds": round(s.seconds, 1)}
                         for s in study.stages.history]
    results["wall_seconds"] = round(time.perf_counter() - began, 1)  # less than the stages' sum: trainings overlap
    write_json(Path(config.out) / "results.json", results)
    report = write_report(results, config.out)
    print(f"study finished in {time.perf_counter() - began:.0f} s; "
          f"{len(study.stages.ran())} stages ran, {len(study.stages.history) - len(study.stages.ran())} reused")
    return report


def print_plan(source: str, overrides: dict[str, Any] | None = None, settings: list[str] | None = None,
               images: str | None = None) -> list:
    """`celadon run SOURCE --dry-run`: every stage the study would reach, reused or to run, and the work of those
    to run (trainings, images trained on, LoRA steps, images generated), counted on the split when it exists
    or on `images` ("TRAIN,VAL,TEST"); nothing runs and nothing is written."""
    from celadon.errors import CeladonError
    from celadon.experiment.estimate import workload_of

    config = load_study(source, overrides, settings)
    stages, notes = plan_study(config)
    print(f"{config.name}: {len(stages)} stages in {Path(config.out).resolve()}")
    for stage in stages:
        state = "to run" if stage.planned else "reused"
        print(f"  {stage.label:<44}{stage.kind + '-' + stage.key:<26}{state:>8}")
    todo = [s for s in stages if s.planned]
    print(f"{len(todo)} to run, {len(stages) - len(todo)} reused")
    for note in notes:
        print(f"note: {note}")
    counts = _split_counts(stages) if images is None else images.split(",")
    if counts is None:
        print("the split is not made yet: give --images TRAIN,VAL,TEST to count the work, and `celadon bench "
              "estimate` turns it into minutes")
        return stages
    try:
        train, val, test = (int(n) for n in counts)
    except ValueError:
        raise CeladonError(f"--images {images!r}: give three integers, e.g. --images 1729,500,271") from None
    work = workload_of(todo, train, val, test, train)
    print(f"work to run ({train:,}/{val:,}/{test:,} train/val/test originals): {len(work.trainings)} classifier "
          f"trainings ({sum(work.trainings):,} images trained on), LoRA {work.lora_steps} steps, "
          f"{sum(n for n, _ in work.generated.values()):,} images generated; minutes: `celadon bench estimate`")
    return stages


def _split_counts(stages: list) -> tuple[int, int, int] | None:
    """Originals per split of a finished split stage, else None."""
    import pandas as pd

    split = next((s for s in stages if s.kind == "split" and not s.planned), None)
    if split is None:
        return None
    frame = pd.read_csv(split.info["splits"])
    if "aug_seed" in frame:
        frame = frame[frame["aug_seed"].isna()]
    counts = frame["split"].value_counts()
    return int(counts.get("train", 0)), int(counts.get("val", 0)), int(counts.get("test", 0))


def print_summary(out: Path) -> None:
    """Wall time per stage and the headline table, from results.json."""
    import json

    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    print("\n== wall time per stage (this run)")
    for stage in results["stages"]:
        state = "reused" if stage["reused"] else f"{stage['seconds']:7.1f} s"
        print(f"  {stage['stage']:<40}{state:>10}")
    print(f"  {'sum of the stages':<40}{sum(s['seconds'] for s in results['stages']):7.1f} s")
    if "wall_seconds" in results:  # trainings that ran at once overlap in the sum
        print(f"  {'wall time of the study':<40}{results['wall_seconds']:7.1f} s")
    rows = [r for r in results.get("table14", []) if r["metric"] == "f1_macro" or r["task"] == "all"]
    rows += results.get("rare_combinations", [])
    if rows:
        split = results.get("endpoint_split", "test")
        print(f"\n== on {split}, mean [95% t-interval] over seeds {results['seeds']}; vs baseline: difference "
              f"[95% t-interval] (seeds + {split} images), Holm-adjusted p, verdict")
        width = max(len(r["arm"]) for r in rows) + 1  # long arm names must not run into the figures
        for r in rows:
            c = r.get("comparison")
            change = ""
            if c and c["n"] >= 2:
                boot = (f" ({c['combined_low']:+.3f}, {c['combined_high']:+.3f})"
                        if c.get("combined_low") is not None and c["combined_low"] == c["combined_low"] else "")
                change = (f"  {c['difference']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]{boot} "
                          f"p_adj {c['p_adjusted']:.3f} {c['verdict']}")
            name = r["task"] if "task" in r else r["group"]
            interval = f" [{r['low']:.3f}, {r['high']:.3f}]" if r["n"] >= 2 else ""
            print(f"  {name[:34]:<35}{r['arm']:<{width}}{r['mean']:.3f}{interval}{change}")
    primary = results.get("primary")
    if primary:
        for arm, row in primary["arms"].items():
            c = row.get("comparison")
            if c and c["n"] >= 2:
                print(f"  primary ({primary['endpoint']}) {arm}: {c['verdict']}; {declared_effect_reach(c)}")

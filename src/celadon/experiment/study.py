"""`celadon run CONFIG` and `celadon demo` (the `demo` preset): the whole study from a config, with the wall
time of every stage and the results table at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celadon.experiment.config import load_study
from celadon.experiment.runner import execute_study


def run_study(source: str, overrides: dict[str, Any] | None = None, settings: list[str] | None = None,
              progress: bool = True) -> Path:
    """`celadon run SOURCE` (a YAML or a preset name); `celadon demo` is `run_study("demo")`."""
    config = load_study(source, overrides, settings)
    report = execute_study(config, progress)
    print_summary(Path(config.out))
    print(f"\nreport: {report.resolve()}")
    return report


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
        print(f"\n== on test, mean [95% t-interval] over seeds {results['seeds']}; vs baseline: difference "
              "[95% t-interval] (hierarchical bootstrap), Holm-adjusted p, verdict")
        for r in rows:
            c = r.get("comparison")
            change = ""
            if c and c["n"] >= 2:
                boot = f" ({c['boot_low']:+.3f}, {c['boot_high']:+.3f})" if c.get("boot_low") is not None else ""
                change = (f"  {c['difference']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]{boot} "
                          f"p_adj {c['p_adjusted']:.3f} {c['verdict']}")
            name = r["task"] if "task" in r else r["group"]
            interval = f" [{r['low']:.3f}, {r['high']:.3f}]" if r["n"] >= 2 else ""
            print(f"  {name[:34]:<35}{r['arm']:<18}{r['mean']:.3f}{interval}{change}")
    primary = results.get("primary")
    if primary:
        for arm, row in primary["arms"].items():
            c = row.get("comparison")
            if c and c["n"] >= 2:
                need = c.get("seeds_needed")
                print(f"  primary ({primary['endpoint']}) {arm}: {c['verdict']}; smallest detectable effect "
                      f"±{c['detectable']:.3f}; seeds to detect {c['difference']:+.3f}: {need or 'more than 1000'}")

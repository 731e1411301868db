"""`celadon demo`: the paper's whole study on the embedded default (the `demo` preset of `celadon run`), with
the wall time of every stage and the results table at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celadon.experiment.config import load_experiment
from celadon.experiment.runner import run_experiment


def run_study(source: str, overrides: dict[str, Any] | None = None, settings: list[str] | None = None,
              progress: bool = True) -> Path:
    """`celadon run SOURCE` (a YAML or a preset name); `celadon demo` is `run_study("demo")`."""
    config = load_experiment(source, overrides, settings)
    report = run_experiment(config, progress)
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
    print(f"  {'total':<40}{sum(s['seconds'] for s in results['stages']):7.1f} s")
    rows = [r for r in results.get("table14", []) if r["metric"] == "f1_macro" or r["task"] == "all"]
    if rows:
        print(f"\n== macro-F1 on test, mean [95% CI] over seeds {results['seeds']}")
        for r in rows:
            delta = r.get("delta")
            change = (f"  {delta['mean']:+.3f} [{delta['low']:+.3f}, {delta['high']:+.3f}] {r['verdict']}"
                      if delta else "")
            print(f"  {r['task']:<8}{r['arm']:<24}{r['mean']:.3f} [{r['low']:.3f}, {r['high']:.3f}]{change}")

"""Table 6 of a finished demo read by two judges: the reference it was judged by, and an independent judge.

The independent judge is what `synthesis.judge: own_render` trains: the reference's own settings on a render of
its own (the collection's labels row for row, drawn as other objects: image seed = seed + 7919; no image shared
with the collection), split and stopped on its own validation photos, then read on the study's validation
photos. Every generation of the compare plan is
checked again by `celadon synth qc` with that judge (same settings as the study's QC), and Table 6 is computed
for both judges with the study's own code (`experiment.results.table6`).

Run from a clone, after a demo: `.venv/bin/python scripts/judge_readings.py runs/demo runs/judge-readings`
(about 5 minutes on 2 CPU cores; everything it computes goes under the second folder).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import yaml

from celadon.cli import main
from celadon.experiment.config import load_study
from celadon.experiment.judge import judge_render_config
from celadon.experiment.results import table6


def _stages(study: Path) -> dict[str, Path]:
    """Stage folders by label, from the study's results.json."""
    results = json.loads((study / "results.json").read_text(encoding="utf-8"))
    return {s["stage"]: study / "stages" / s["folder"] for s in results["stages"]}, results


def run(study: Path, out: Path) -> dict:
    stages, results = _stages(study)
    config = load_study(str(study / "config.yaml"))
    compare = results["table6"]["plan"]
    split = next(stages[label] for label in stages if label.startswith("adaptive split"))
    splits = split / "splits.csv"
    reference = stages["train reference (seed 0)"]
    render = judge_render_config(config)
    quiet = ["--quiet"]
    data = out / "judge-data"
    assert main(["data", "make-demo", str(data), "--n", str(render.n), "--size", str(render.size), "--seed",
                 str(render.seed), "--image-seed", str(render.image_seed), *quiet]) == 0
    assert main(["data", "split", str(data / "manifest.csv"), "--out", str(out / "judge-split"), "--seed",
                 str(config.split.get("seed", 0)), *quiet]) == 0
    trained = yaml.safe_load((reference / "run.yaml").read_text(encoding="utf-8"))["config"]
    assert main(["train", "-c", str(reference / "run.yaml"), str(out / "judge-split" / "splits.csv"), "--out",
                 str(out / "judge"), "--no-log-tensorboard", *quiet]) == 0
    assert main(["evaluate", str(out / "judge"), str(splits), "--split", "val", "--out", str(out / "judge-val"),
                 "--cache-dir", trained["cache_dir"], *quiet]) == 0
    old_qc, new_qc = {}, {}
    for name in config.synthesis.generators:
        label = f"QC {compare}/{name}"
        if label not in stages:
            continue
        old_qc[name] = stages[label]
        qc_run = yaml.safe_load((stages[label] / "run.yaml").read_text(encoding="utf-8"))["config"]
        assert main(["synth", "qc", "-c", str(stages[label] / "run.yaml"), "--model", str(out / "judge"), "--out",
                     str(out / f"qc-{name}"), *quiet]) == 0
        new_qc[name] = out / f"qc-{name}"
        assert qc_run["table"]  # the same generated images
    plan = stages[f"plan {compare}"] / "plan.csv"
    taxonomy = SimpleNamespace(taxonomy=config.taxonomy)
    old = table6(SimpleNamespace(config=taxonomy, judge_eval=SimpleNamespace(path=stages["evaluate reference on val "
                                                                                           "(seed 0)"])), old_qc, plan)
    new = table6(SimpleNamespace(config=taxonomy, judge_eval=SimpleNamespace(path=out / "judge-val")), new_qc, plan)
    summary = {"study": str(study), "plan": compare,
               "judge_render": {"seed": render.seed, "image_seed": render.image_seed, "n": render.n},
               "old_judge": old, "new_judge": new}
    (out / "judge_readings.json").write_text(json.dumps(summary, indent=1, default=str), encoding="utf-8")
    return summary


def _print(summary: dict) -> None:
    for which in ("old_judge", "new_judge"):
        rows = summary[which]["rows"]
        print(f"\n{which} (top-1 on real validation photos: {summary[which]['judge_real_top1']})")
        for row, values in rows.items():
            if row.startswith(("relative fidelity", "label fidelity", "QC pass")) and "interval" not in row:
                shown = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
                print(f"  {row}: {shown}")


if __name__ == "__main__":
    _print(run(Path(sys.argv[1]), Path(sys.argv[2])))

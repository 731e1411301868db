"""docs/config-reference.md, written from the config dataclasses themselves: every key a study config takes,
its default and the comment beside it in the code, section by section, with the keys the runner sets listed
apart. A test checks the file against this function, so the reference cannot drift from the code.

Regenerate: `.venv/bin/python -m celadon.experiment.config_doc > docs/config-reference.md`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from celadon.experiment.identity import runner_sets

# (section, "module:Class", what the section is); stage sections take overrides of that stage's config
SECTIONS = [
    ("top level", "celadon.experiment.config:StudyConfig", "the study itself"),
    ("arms[]", "celadon.experiment.config:Arm", "one entry per arm (training recipe compared across seeds)"),
    ("statistics", "celadon.experiment.config:StatisticsConfig", "how arms are compared with the baseline"),
    ("synthesis", "celadon.experiment.config:SynthesisConfig", "the synthesis part of the study"),
    ("embedded", "celadon.data.embedded:EmbeddedConfig", "the embedded collection, when there is no manifest"),
    ("split", "celadon.data.split:SplitConfig", "the adaptive split"),
    ("augment", "celadon.data.augment:AugmentConfig", "threshold offline augmentation (absent: none)"),
    ("classifier, synthesis.reference", "celadon.classify.train:TrainConfig",
     "the arms' classifier; the reference's own settings ({} = the classifier's)"),
    ("evaluate", "celadon.evaluate.run:EvaluateConfig", "every evaluation"),
    ("synthesis.select", "celadon.synth.select:SelectConfig", "seven-tier selection of LoRA training images"),
    ("synthesis.lora", "celadon.synth.lora:LoraConfig", "LoRA training"),
    ("synthesis.plans.NAME", "celadon.synth.plan:PlanConfig", "each plan (Datasets A, B, ...)"),
    ("synthesis.generate, synthesis.generators.NAME", "celadon.synth.generate:GenerateConfig",
     "generation; each named generator overrides `generate` and may add `lora: false` (the base model alone)"),
    ("synthesis.qc", "celadon.synth.qc:QCConfig", "automatic QC"),
]
NESTED = {"StudyConfig": ("synthesis", "statistics", "arms"), "Arm": ()}  # documented as sections of their own


def _load(target: str) -> type:
    import importlib

    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value: Any = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "(required)"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
        value = [dataclasses.asdict(v) for v in value]
    return "`" + json.dumps(value, ensure_ascii=False, default=str).replace("|", "\\|") + "`"


def config_reference() -> str:
    from celadon.cli.options import field_help

    out = ["# Study config reference", "",
           "Every key a study YAML takes (`celadon run CONFIG`), written from the code by `celadon.experiment."
           "config_doc`; [study.md](study.md) explains how the parts fit. Keys the runner sets itself are listed "
           "under each section and refused in a config.", ""]
    for section, target, what in SECTIONS:
        cls = _load(target)
        helps = field_help(cls)
        owned = set(runner_sets(cls).fields)
        out += [f"## `{section}`", "", f"{what[0].upper()}{what[1:]} (`{cls.__name__}`).", "",
                "| key | default | what it does |", "| --- | --- | --- |"]
        for f in dataclasses.fields(cls):
            if f.name in owned or f.name in NESTED.get(cls.__name__, ()):
                continue
            text = helps.get(f.name, "").replace("%%", "%").replace("|", "\\|")
            out.append(f"| `{f.name}` | {_default(f)} | {text} |")
        if owned:
            out += ["", "Set by the runner: " + ", ".join(f"`{name}`" for name in runner_sets(cls).fields) + "."]
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(config_reference(), end="")

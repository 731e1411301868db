"""The experiment YAML: data, split, classifier, synthesis and the arms to compare, as typed dataclasses.

Sections that configure a library stage (classifier -> `TrainConfig`, synthesis.lora -> `LoraConfig`, ...)
are plain overrides of that stage's own config, checked key by key, so there is one list of settings per
stage and a typo in the YAML is a one-line error naming the key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from celadon.errors import CeladonError
from celadon.settings import check_types
from celadon.taxonomy import load_taxonomy

PRESETS = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class Arm:
    name: str
    plan: str | None = None  # a key of synthesis.plans; None = real only
    ratio: float = 0.0  # share of training draws that are synthetic
    tasks: list[str] | None = None  # tasks synthetic images train (task masking); None = all
    generator: str = "lora"  # which generation trains this arm: "lora" or "vanilla"


@dataclass
class SynthesisConfig:
    model: str = "tiny"
    lora: dict[str, Any] = field(default_factory=dict)  # LoraConfig overrides
    select: dict[str, Any] = field(default_factory=dict)  # SelectConfig overrides
    plans: dict[str, dict[str, Any]] = field(default_factory=lambda: {"A": {"preset": "A"}, "B": {"preset": "B"}})
    generate: dict[str, Any] = field(default_factory=dict)  # GenerateConfig overrides
    qc: dict[str, Any] = field(default_factory=dict)  # QCConfig overrides
    compare_plan: str | None = "B"  # plan generated with the vanilla model too, for Table 6; None skips it
    compare_limit: int = 0  # first N items of that plan for the vanilla comparison (0: all)
    # The model whose confusion pairs steer selection and plans and which judges label fidelity in QC.
    # Its own settings, so changing the arms' classifier does not redo synthesis; {} = the classifier's.
    reference: dict[str, Any] = field(default_factory=dict)


@dataclass
class StatisticsConfig:
    """How arms are compared with the baseline (see experiment/comparisons.py)."""

    # The one comparison the study is about: "all/mean_f1_macro" (mean over tasks of macro-F1), "TASK/METRIC"
    # (f1_macro, top1, top5, f1_weighted, minority, majority) or "rare combinations/rare".
    primary: str = "all/mean_f1_macro"
    alpha: float = 0.05  # family-wise error rate (Holm) for the verdicts
    power: float = 0.8  # for the smallest detectable effect and the seeds a difference would need
    resamples: int = 10_000  # bootstrap replicates (seeds x test images)
    seed: int = 0  # of the bootstrap


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    out: str = "runs/experiment"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    manifest: str | None = None  # a manifest of the user's images; None = the embedded procedural dataset
    image_root: str | None = None  # the manifest's image paths must stay inside it (default: its folder)
    taxonomy: str | None = None  # a taxonomy YAML; None = the paper's porcelain vocabulary
    embedded: dict[str, Any] = field(default_factory=dict)  # embedded EmbeddedConfig overrides (n, size, seed)
    split: dict[str, Any] = field(default_factory=dict)  # SplitConfig overrides; keep_split: COLUMN keeps yours
    augment: dict[str, Any] | None = None  # AugmentConfig overrides; None = no offline augmentation
    classifier: dict[str, Any] = field(default_factory=dict)  # TrainConfig overrides
    evaluate: dict[str, Any] = field(default_factory=dict)  # EvaluateConfig overrides (minority threshold)
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    arms: list[Arm] = field(default_factory=lambda: [Arm("baseline"), Arm("A", "A", 0.05), Arm("B", "B", 0.10)])
    baseline: str = "baseline"  # the arm every other arm is compared with
    statistics: StatisticsConfig = field(default_factory=StatisticsConfig)
    tsne_per_set: int = 300  # images per set (real, each synthetic set) in the t-SNE
    threads: int = 0  # torch threads (0: the cores other processes leave free)
    workers: int = 2  # processes for rendering and decoding


def _known(cls, section: str, values: dict, exclude: tuple[str, ...] = ()) -> dict:
    names = [f.name for f in dataclasses.fields(cls) if f.name not in exclude]
    for key in values:
        if key not in names:
            raise CeladonError(f"{section}.{key}: unknown setting; known: {', '.join(names)}")
    return values


def _mapping(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CeladonError(f"{where}: expected a mapping of settings, got {type(value).__name__}")
    return value


# Settings the runner sets itself (paths between stages, seeds per arm), per stage config.
_TRAIN_OWNED = ("splits", "out", "synthetic", "synthetic_ratio", "synthetic_tasks", "seed", "cache_dir", "taxonomy")


def _without(values: Any, key: str) -> Any:
    """A section minus a runner-level key (split.keep_split names a manifest column, not a SplitConfig field)."""
    return {k: v for k, v in values.items() if k != key} if isinstance(values, dict) else values


def check_overrides(config: ExperimentConfig) -> None:
    """Every stage section names only settings its stage has, and none the runner sets itself."""
    from celadon.classify.train import TrainConfig
    from celadon.data.augment import AugmentConfig
    from celadon.data.embedded import EmbeddedConfig
    from celadon.data.split import SplitConfig
    from celadon.evaluate.run import EvaluateConfig
    from celadon.synth.generate import GenerateConfig
    from celadon.synth.lora import LoraConfig
    from celadon.synth.plan import PlanConfig
    from celadon.synth.qc import QCConfig
    from celadon.synth.select import SelectConfig

    s = config.synthesis
    sections = [(EmbeddedConfig, "embedded", config.embedded, ("workers",)),
                (SplitConfig, "split", _without(config.split, "keep_split"), ()),
                (AugmentConfig, "augment", config.augment or {}, ()),
                (TrainConfig, "classifier", config.classifier, _TRAIN_OWNED),
                (EvaluateConfig, "evaluate", config.evaluate, ("model_dir", "splits", "out", "cache_dir")),
                (LoraConfig, "synthesis.lora", s.lora, ("data", "out", "model")),
                (SelectConfig, "synthesis.select", s.select, ("metrics",)),
                (GenerateConfig, "synthesis.generate", s.generate, ("plan", "out", "model", "lora", "shard")),
                (QCConfig, "synthesis.qc", s.qc, ("table", "real", "out", "model_dir", "taxonomy", "judge_metrics")),
                (TrainConfig, "synthesis.reference", s.reference, _TRAIN_OWNED)]
    sections += [(PlanConfig, f"synthesis.plans.{name}", _mapping(plan, f"synthesis.plans.{name}"), ("metrics",))
                 for name, plan in s.plans.items()]
    for cls, name, values, owned in sections:
        _known(cls, name, _mapping(values, name))
        check_types(cls, values, name)
        for key in owned:
            if key in values:
                raise CeladonError(f"{name}.{key}: set by the experiment runner, not in the config; remove it")
    names = [arm.name for arm in config.arms]
    if len(set(names)) != len(names):
        raise CeladonError(f"arms: names must be unique, got {names}")
    if config.baseline not in names:
        raise CeladonError(f"baseline: {config.baseline!r} is not an arm ({', '.join(names)})")
    tasks = load_taxonomy(config.taxonomy).task_names
    for arm in config.arms:
        if arm.plan is None and (arm.ratio or arm.tasks is not None):
            raise CeladonError(f"arms.{arm.name}: ratio and tasks apply to arms with a plan (synthetic images); "
                               "remove them or give the arm a plan")
        unknown = [t for t in arm.tasks or [] if t not in tasks]
        if unknown:
            raise CeladonError(f"arms.{arm.name}.tasks: {', '.join(unknown)} not a task of the taxonomy "
                               f"({', '.join(tasks)})")
        if arm.plan is not None and arm.plan not in s.plans:
            raise CeladonError(f"arms.{arm.name}.plan: {arm.plan!r} is not in synthesis.plans "
                               f"({', '.join(s.plans) or 'none'})")
        if arm.plan is not None and not 0 < arm.ratio < 1:
            raise CeladonError(f"arms.{arm.name}.ratio: must be between 0 and 1 (e.g. 0.1 for 90:10), got {arm.ratio}")
        if arm.generator not in ("lora", "vanilla"):
            raise CeladonError(f"arms.{arm.name}.generator: 'lora' or 'vanilla', got {arm.generator!r}")
    if s.compare_plan is not None and s.compare_plan not in s.plans:
        raise CeladonError(f"synthesis.compare_plan: {s.compare_plan!r} is not in synthesis.plans")
    if not config.seeds:
        raise CeladonError("seeds: give at least one seed (three or more for confidence intervals)")
    _check_statistics(config)


PRIMARY_METRICS = ("f1_macro", "top1", "top5", "f1_weighted", "minority", "majority")


def _check_statistics(config: ExperimentConfig) -> None:
    s = config.statistics
    task, _, metric = s.primary.partition("/")
    if s.primary not in ("all/mean_f1_macro", "rare combinations/rare"):
        tasks = load_taxonomy(config.taxonomy).task_names
        if task not in tasks or metric not in PRIMARY_METRICS:
            raise CeladonError(f"statistics.primary: {s.primary!r} is not a measure; use all/mean_f1_macro, "
                               f"rare combinations/rare or TASK/METRIC with TASK in {', '.join(tasks)} and METRIC "
                               f"in {', '.join(PRIMARY_METRICS)}")
    if not 0 < s.alpha < 1 or not 0 < s.power < 1:
        raise CeladonError(f"statistics: alpha and power must be between 0 and 1, got {s.alpha} and {s.power}")
    if s.resamples < 100:
        raise CeladonError(f"statistics.resamples: at least 100 (default 10000), got {s.resamples}")


def resolve_config_path(name: str) -> Path:
    """A YAML path, or the name of a shipped preset (demo, paper)."""
    path = Path(name)
    if path.exists():
        return path
    preset = PRESETS / f"{name.removesuffix('.yaml')}.yaml"
    if preset.exists() and not path.suffix:
        return preset
    shipped = ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml")))
    raise CeladonError(f"{name}: no such config file; give a YAML path or a preset ({shipped})")


def apply_settings(raw: dict, items: list[str]) -> dict:
    """`--set classifier.epochs=10 --set 'seeds=[0,1,2,3]'`: dotted keys, YAML values, over the file's."""
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise CeladonError(f"--set {item!r}: give KEY=VALUE, e.g. classifier.epochs=10")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise CeladonError(f"--set {item!r}: the value is not valid YAML") from None
        *parents, last = key.strip().split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise CeladonError(f"--set {item!r}: {part} is not a section")
        node[last] = value
    return raw


def load_experiment(source: str | Path, overrides: dict[str, Any] | None = None,
                    settings: list[str] | None = None) -> ExperimentConfig:
    path = resolve_config_path(str(source))
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise CeladonError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    raw = apply_settings(_mapping(raw, str(path)) | (overrides or {}), settings or [])
    _known(ExperimentConfig, str(path), raw)
    check_types(ExperimentConfig, {k: v for k, v in raw.items() if k not in ("synthesis", "statistics", "arms")}, "")
    synthesis = _known(SynthesisConfig, f"{path}: synthesis", _mapping(raw.pop("synthesis", None), "synthesis"))
    check_types(SynthesisConfig, synthesis, "synthesis")
    statistics = _known(StatisticsConfig, "statistics", _mapping(raw.pop("statistics", None), "statistics"))
    check_types(StatisticsConfig, statistics, "statistics")
    arms = []
    if "arms" in raw and not isinstance(raw["arms"], list):
        raise CeladonError(f"arms: expected a list of arms, got {raw['arms']!r}")
    if "arms" in raw and not raw["arms"]:
        raise CeladonError("arms: the list is empty; give at least the baseline, e.g. [{name: baseline}]")
    for i, item in enumerate(raw.pop("arms", None) or []):
        item = _mapping(item, f"arms[{i}]")
        if "name" not in item:
            raise CeladonError(f"{path}: arms[{i}] needs a name")
        check_types(Arm, _known(Arm, f"arms.{item['name']}", item), f"arms.{item['name']}")
        arms.append(Arm(**item))
    config = ExperimentConfig(**raw, synthesis=SynthesisConfig(**synthesis), statistics=StatisticsConfig(**statistics),
                              **({"arms": arms} if arms else {}))
    config.source = str(path)  # type: ignore[attr-defined]
    check_overrides(config)
    return config

"""`celadon bench estimate`: how long a study will take on N devices, from what it will do and measured rates.

The workload is counted from the study's config and its image counts exactly as the runner will spend it
(distinct trainings after the reference and twin arms are shared, optimizer steps x batch per training, the plan
sizes each generator makes, img2img's `strength` x steps); the rates come from the benchmarks run on the machine
in question (`bench train`, `bench lora`, `bench generate`, each with `--json`). On N devices the arms' trainings
run one per device after the reference, generation runs one shard per device, and LoRA under `accelerate launch`
sees the same images in steps / N (its gradient exchange is not measured). Rendering, splitting, QC's image
statistics and t-SNE are left out (2.5 of the demo's 35.5 minutes on 2 CPU cores).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from celadon.errors import CeladonError
from celadon.experiment.config import StudyConfig
from celadon.settings import build

FORWARD_SHARE = 1 / 3  # a forward pass (evaluation, QC's judge) costs about a third of a training step per image


@dataclass
class Workload:
    trainings: list[int] = field(default_factory=list)  # images trained on (steps x batch), per distinct training
    evaluated: list[int] = field(default_factory=list)  # images evaluated by each (validation each epoch + final)
    lora_steps: int = 0
    lora_grid_images: int = 0  # the sample grids drawn at each LoRA checkpoint (20 denoising steps each)
    generated: dict[str, tuple[int, int]] = field(default_factory=dict)  # "plan/generator" -> (images, steps each)


@dataclass
class Rates:
    train_images_per_s: float
    lora_steps_per_s: float
    generate_images_per_s: float
    generate_steps: int  # the denoising steps per image that rate was measured at
    measured: dict[str, dict] = field(default_factory=dict)  # each benchmark's own settings, to check against


def _train_config(settings: dict):
    """The classifier config the runner builds from a study's `classifier` (or `reference`) settings."""
    from celadon.classify.train import TrainConfig

    return build(TrainConfig, settings, "TrainConfig")


def _epoch_images(rows: int, config, ratio: float) -> tuple[int, int]:
    """(images per training, epochs) for one training of `rows` real rows, as Trainer counts them."""
    epoch = int(round(rows / (1 - ratio))) if ratio and config.mixing == "add" else rows
    steps = -(-epoch // config.batch_size)
    if config.max_steps_per_epoch:
        steps = min(steps, config.max_steps_per_epoch)
    return steps * config.batch_size * config.epochs, config.epochs


def study_workload(config: StudyConfig, train: int, val: int, test: int, train_rows: int = 0) -> Workload:
    """What `config` will compute on a split of `train`/`val`/`test` originals; `train_rows` is the training table
    after offline augmentation (default `train`). Trainings run to their last epoch (early stopping can end them
    sooner, so this is an upper bound)."""
    from celadon.synth.generate import GenerateConfig
    from celadon.synth.lora import GRID_PROMPTS, LoraConfig
    from celadon.synth.plan import PlanConfig, plan_total

    train, val, test = int(train), int(val), int(test)
    rows = int(train_rows) or train
    work = Workload()
    reference = config.synthesis.reference or config.classifier
    index: dict[str, int] = {}  # stage key -> its training

    def add(settings: dict, seed: int, mix: tuple, final: int) -> None:
        trained = _train_config(settings)  # keyed by the resolved settings, as the runner's stage key is
        key = json.dumps([trained.key_settings(), seed, mix], sort_keys=True, default=str)
        if key in index:  # trained once (the reference as baseline seed 0, twin arms), evaluated by each
            work.evaluated[index[key]] += final
            return
        index[key] = len(work.trainings)
        images, epochs = _epoch_images(rows, trained, mix[1] if mix else 0.0)
        work.trainings.append(images)
        work.evaluated.append(val * epochs + final)

    add(reference, config.seeds[0], (), val)  # always, and alone: selection, plans and QC wait for it
    for arm in config.arms:
        mix = (arm.plan, arm.ratio, arm.generator, arm.tasks) if arm.plan else ()
        for seed in config.seeds:
            add(config.classifier, seed, mix, test)
    s = config.synthesis
    if not (any(arm.plan for arm in config.arms) or s.compare_plan):
        return work
    work.lora_steps = int(s.lora.get("steps", LoraConfig.steps))
    every = int(s.lora.get("checkpoint_every", LoraConfig.checkpoint_every))
    work.lora_grid_images = 2 * GRID_PROMPTS * -(-work.lora_steps // every)
    wanted = {(arm.plan, arm.generator) for arm in config.arms if arm.plan}
    if s.compare_plan:
        wanted |= {(s.compare_plan, generator) for generator in s.generators}

    def plan_size(name: str) -> int:
        return plan_total(build(PlanConfig, s.plans[name], "PlanConfig"), train)

    def denoising_steps(spec: dict) -> int:
        """Per image: `steps`, or img2img's int(strength x steps)."""
        settings = s.generate | spec
        steps = int(settings.get("steps", GenerateConfig.steps))
        if settings.get("generator") == "img2img":
            return int(float(settings.get("strength", GenerateConfig.strength)) * steps)
        return steps

    for name, generator in sorted(wanted):
        work.generated[f"{name}/{generator}"] = plan_size(name), denoising_steps(s.generators[generator])
    if s.sweep:
        base = s.generators[s.sweep["generator"]]
        own = float((s.generate | base).get("strength", GenerateConfig.strength))
        for strength in s.sweep.get("strengths", []):
            spec = base | {"strength": float(strength)}
            if float(strength) == own and (s.compare_plan, s.sweep["generator"]) in wanted:
                continue  # the generator's own strength: the runner reuses that generation
            work.generated[f"{s.compare_plan}/{s.sweep['generator']}@{strength}"] = \
                plan_size(s.compare_plan), denoising_steps(spec)
    return work


def read_rates(train: str | Path, lora: str | Path | None, generate: str | Path | None) -> Rates:
    """Rates from the benchmarks' --json files (LoRA and generation may be absent for a study without them)."""
    def load(path: str | Path | None, what: str) -> dict:
        if path is None:
            return {}
        try:
            return json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CeladonError(f"{path}: no such file; write it with `celadon bench {what} --json {path}`") from None
        except (OSError, ValueError) as exc:
            raise CeladonError(f"{path}: not a `celadon bench {what} --json` file ({exc})") from None

    def rate(values: dict, path, keys: tuple[str, ...], what: str) -> float:
        value = values
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if path is not None and not isinstance(value, int | float):
            raise CeladonError(f"{path}: no {'.'.join(keys)}; write it with `celadon bench {what} --json`")
        return float(value or 0.0)

    measured = {"train": load(train, "train"), "lora": load(lora, "lora"), "generate": load(generate, "generate")}
    return Rates(rate(measured["train"], train, ("cached_images_per_s",), "train"),
                 rate(measured["lora"], lora, ("celadon", "steps_per_s"), "lora"),
                 rate(measured["generate"], generate, ("celadon", "images_per_s"), "generate"),
                 int(measured["generate"].get("settings", {}).get("steps", 20)), measured)


def mismatches(config: StudyConfig, rates: Rates) -> list[str]:
    """Where a benchmark measured other settings than the study uses: the estimate then scales the wrong rate."""
    notes = []
    classifier = _train_config(config.classifier)
    for key in ("backbone", "image_size", "batch_size", "train_depthwise", "freeze_stages"):
        got = rates.measured["train"].get(key)
        if got is not None and got != getattr(classifier, key):
            notes.append(f"bench train measured {key} {got}; the study's classifier uses {getattr(classifier, key)}")
    got = rates.measured["train"].get("augmented_on")
    if got and classifier.augment_on in ("loader", "device") and got != classifier.augment_on:
        notes.append(f"bench train augmented on the {got}; the study's classifier on the {classifier.augment_on}")
    lora = config.synthesis.lora
    for key in ("batch_size", "resolution", "rank", "train_text_encoder"):
        got = rates.measured["lora"].get("settings", {}).get(key)
        if got is not None and key in lora and got != lora[key] and not (key == "resolution" and got == 0):
            notes.append(f"bench lora measured {key} {got}; the study's LoRA uses {lora[key]}")
    got = rates.measured["generate"].get("settings", {}).get("resolution")
    wanted = config.synthesis.generate.get("resolution")
    if got and wanted and got != wanted:  # 0 or unset: the model's own
        notes.append(f"bench generate measured resolution {got}; the study generates at {wanted}")
    return notes


def estimate(work: Workload, rates: Rates, devices: int) -> dict[str, float]:
    """Seconds per part of the study on `devices` devices (1: everything in turn on one)."""
    if devices < 1:
        raise CeladonError(f"--gpus {devices}: give at least 1")
    if work.trainings and rates.train_images_per_s <= 0:
        raise CeladonError("the training rate is 0: run `celadon bench train --json FILE` and pass it")
    if (work.generated or work.lora_grid_images) and rates.generate_images_per_s <= 0:
        raise CeladonError("the study generates images: run `celadon bench generate --json FILE` and pass it")
    if work.lora_steps and rates.lora_steps_per_s <= 0:
        raise CeladonError("the study trains a LoRA: run `celadon bench lora --json FILE` and pass it")

    def seconds(i: int) -> float:
        return (work.trainings[i] + work.evaluated[i] * FORWARD_SHARE) / rates.train_images_per_s

    parts: dict[str, float] = {}
    if work.trainings:
        # the reference alone (synthesis waits for it), then the others in rounds of one per device
        ordered = sorted((seconds(i) for i in range(1, len(work.trainings))), reverse=True)
        rounds = sum(ordered[k] for k in range(0, len(ordered), devices))
        parts["classifier trainings"] = seconds(0) + rounds
    if work.lora_steps:
        from celadon.synth.lora import GRID_STEPS

        grids = work.lora_grid_images * GRID_STEPS / rates.generate_steps / rates.generate_images_per_s
        parts["LoRA"] = math.ceil(work.lora_steps / devices) / rates.lora_steps_per_s + grids
    if work.generated:
        images = sum(n for n, _ in work.generated.values())
        image_steps = sum(n * steps for n, steps in work.generated.values())
        parts["generation"] = image_steps / rates.generate_steps / devices / rates.generate_images_per_s
        parts["QC judge"] = images * FORWARD_SHARE / rates.train_images_per_s
    parts["total"] = sum(parts.values())
    return parts

"""`celadon bench estimate`: how long a study will take on N devices, from what it will do and measured rates.

The workload is counted from the runner's own plan of the study (a dry run: the distinct stages it would run)
and the split's image counts: optimizer steps x batch per training, the plan sizes each generator makes,
img2img's `strength` x steps; the rates come from the benchmarks run on the machine
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
    from celadon.classify.mixing import epoch_size

    epoch = epoch_size(config.mixing, rows, ratio, config.budget_ratio, bool(ratio))
    steps = -(-epoch // config.batch_size)
    if config.max_steps_per_epoch:
        steps = min(steps, config.max_steps_per_epoch)
    return steps * config.batch_size * config.epochs, config.epochs


def study_workload(config: StudyConfig, train: int, val: int, test: int, train_rows: int = 0) -> Workload:
    """What `config` will compute, from scratch, on a split of `train`/`val`/`test` originals; `train_rows` is the
    training table after offline augmentation (default `train`). The stages are the runner's own plan (a dry
    run, `study.plan_study`), so trainings shared by two arms, or by the reference and the baseline's first
    seed, and generations a sweep shares are counted once, as the runner runs them. Trainings run to their last
    epoch (early stopping can end them sooner, so this is an upper bound)."""
    import dataclasses
    import tempfile

    from celadon.experiment.study import plan_study

    with tempfile.TemporaryDirectory(prefix="celadon-estimate-") as nowhere:  # nothing there: every stage to run
        stages, _ = plan_study(dataclasses.replace(config, out=str(Path(nowhere) / "study")))
    return workload_of(stages, int(train), int(val), int(test), int(train_rows) or int(train))


def workload_of(stages: list, train: int, val: int, test: int, rows: int) -> Workload:
    """The work of a study's planned stages (`study.plan_study`) on a split of these sizes."""
    from celadon.synth.generate import GENERATORS, GenerateConfig
    from celadon.synth.lora import GRID_PROMPTS, LoraConfig
    from celadon.synth.plan import PlanConfig, plan_total

    work = Workload()
    by_name = {f"{s.kind}-{s.key}": s for s in stages}
    trainings: dict[str, int] = {}  # train stage -> its index in the workload
    for stage in stages:
        settings = dict(stage.settings or {})
        if stage.kind == "train":
            trained = _train_config(settings)
            images, epochs = _epoch_images(rows, trained, float(settings.get("synthetic_ratio") or 0.0))
            trainings[f"train-{stage.key}"] = len(work.trainings)
            work.trainings.append(images)
            work.evaluated.append(val * epochs)  # validation after every epoch
        elif stage.kind == "evaluate":
            training = next(name for name in stage.inputs if name.startswith("train-"))
            work.evaluated[trainings[training]] += val if settings.get("split") == "val" else test
        elif stage.kind == "lora":
            steps = int(settings.get("steps", LoraConfig.steps))  # summed: one LoRA per synthesis replicate
            every = int(settings.get("checkpoint_every", LoraConfig.checkpoint_every))
            work.lora_steps += steps
            work.lora_grid_images += 2 * GRID_PROMPTS * -(-steps // every)
        elif stage.kind == "generate":
            plan = by_name[next(name for name in stage.inputs if name.startswith("plan-"))]
            size = plan_total(build(PlanConfig, dict(plan.settings), "PlanConfig"), train)
            method = GENERATORS[settings.get("generator", GenerateConfig.generator)]
            steps = int(settings.get("steps", GenerateConfig.steps)) if method.denoises else 0  # the references
            if "strength" in method.settings:
                steps = int(float(settings.get("strength", GenerateConfig.strength)) * steps)
            work.generated[stage.label.removeprefix("generate ")] = size, steps
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

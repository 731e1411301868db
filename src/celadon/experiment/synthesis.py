"""The synthesis part of a study's stage graph: selection, captions, LoRA, plans, generation (each arm's generator,
every generator on the compare plan, the strength sweep), QC and curation, and `synthesis.replicates`.

A mixin of `runner.Study`, which provides the stage runner, the config and the stages this part reads (the
split, the training pool, the reference and its validation evaluation).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

from celadon.experiment.identity import key_settings, make
from celadon.experiment.stages import Stage
from celadon.synth.pipeline import model_fingerprint

if TYPE_CHECKING:
    from celadon.experiment.runner import Runs


def replicate_suffix(replicate: int) -> str:
    """How a synthesis replicate's stages and keys are named: replicate 0 as without replicates, then "#1"..."""
    return f"#{replicate}" if replicate else ""


def table6_generators(synthesis) -> dict[str, dict]:
    """Table 6's columns: the study's generators and, where one re-renders source photos (img2img), what doing
    nothing scores on the same sources: `copy` (the photo unchanged) and `roundtrip` (through the VAE alone),
    both with the item's labels. A generator must beat both to have changed what the judge reads."""
    from celadon.experiment.config import generator_method
    from celadon.synth.generate import SOURCE_SETTINGS, get_generator

    specs = dict(synthesis.generators)
    for spec in [specs[name] for name in sorted(specs)]:
        method = get_generator(generator_method(synthesis, spec))
        if method.needs_sources and method.denoises:  # the same sources: the same source settings
            shared = {k: v for k, v in spec.items() if k in SOURCE_SETTINGS}
            return {"copy": {"generator": "copy"} | shared, "roundtrip": {"generator": "roundtrip"} | shared} | specs
    return specs


class SynthesisStages:
    def synthesis(self, runs: Runs) -> None:
        from celadon.data.manifest import read_manifest
        from celadon.synth.captions import write_lora_folder
        from celadon.synth.lora import LoraConfig, train_lora
        from celadon.synth.plan import PlanConfig, run_plan
        from celadon.synth.select import SelectConfig, run_select

        s = self.config.synthesis
        taxonomy = self.taxonomy
        metrics = str(runs.reference_eval.path / "metrics.json")
        roles = {"key": taxonomy.combination, "confusion_task": taxonomy.confusion}  # what the stage will use
        lora = make(LoraConfig, s.lora, model=s.model, threads=self.config.threads, device=self.config.device)
        wanted = {(arm.plan, arm.generator) for arm in self.config.arms if arm.plan}
        specs = table6_generators(s)
        compared = {(s.compare_plan, generator) for generator in specs} if s.compare_plan else set()
        used = {generator for _, generator in wanted | compared} | ({s.sweep["generator"]} if s.sweep else set())
        # A study whose generators are all controls (oracle, replay) trains no LoRA and loads no model.
        pipeline = any(self._method(specs[generator]).uses_pipeline for generator in used)
        model = {"model": s.model, "weights": self._model_weights(s.model)} if pipeline else {}  # rebuilt: redone
        caption = None
        if any(self._uses_lora(specs[generator]) for generator in used):
            select = make(SelectConfig, roles | s.select, metrics=metrics, manifest=str(self.train_table),
                          taxonomy=self.config.taxonomy)
            runs.selection = self.stages.run(
                "select", key_settings(select), [*self.pool, runs.reference_eval],
                lambda p: {"table": str(run_select(read_manifest(self.train_table, taxonomy), p,
                                                   dataclasses.replace(select, out=str(p)))[0])},
                "select LoRA training set")
            caption = self.stages.run("caption", {}, [runs.selection], lambda p: {"folder": str(write_lora_folder(
                read_manifest(runs.selection.info["table"], taxonomy), p, progress=self.progress,
                taxonomy=self.config.taxonomy).parent)}, "caption LoRA training set")
        # The same validation evaluation tells QC which classes the judge can tell apart.
        judge = runs.judge_eval if s.qc.get("judge_min_recall") else None
        for replicate in range(s.replicates):
            # replicate r: the LoRA and the plans' item seeds shifted by r; Table 6 and the sweep read replicate 0
            suffix = replicate_suffix(replicate)
            trained = dataclasses.replace(lora, seed=lora.seed + replicate)
            runs.loras[replicate] = None if caption is None else self.stages.run(
                "lora", key_settings(trained) | model, [caption],
                lambda p, trained=trained: {"folder": str(train_lora(dataclasses.replace(
                    trained, data=caption.info["folder"], out=str(p)), progress=self.progress))},
                f"train LoRA{suffix}")
            pairs = wanted | (compared if replicate == 0 else set())
            for name in sorted({plan for plan, _ in pairs}):
                settings = {"confusion_task": taxonomy.confusion} | s.plans[name]
                plan = make(PlanConfig, settings, metrics=metrics, manifest=runs.split.info["splits"],
                            taxonomy=self.config.taxonomy)
                plan = dataclasses.replace(plan, seed=plan.seed + replicate)
                runs.plans[name + suffix] = self.stages.run(
                    "plan", key_settings(plan), [runs.split, runs.reference_eval],
                    lambda p, plan=plan: {"table": str(run_plan(read_manifest(plan.manifest, taxonomy), p,
                                                                dataclasses.replace(plan, out=str(p)))[0])},
                    f"plan {name}{suffix}")
            for name, generator in sorted(pairs):
                key = f"{name}/{generator}{suffix}"
                runs.generations[key] = self._generate(key, runs.plans[name + suffix], specs[generator],
                                                       runs, model, runs.loras[replicate])
                runs.qc[key] = self._qc(key, runs.generations[key], runs, judge)
        runs.lora = runs.loras[0]
        for strength in s.sweep.get("strengths", []):  # Table 6's sweep: one generator at several strengths
            key = f"{s.compare_plan}/{s.sweep['generator']}@{strength}"
            spec = s.generators[s.sweep["generator"]] | {"strength": float(strength)}
            runs.sweep[float(strength)] = self._qc(key, self._generate(key, runs.plans[s.compare_plan], spec, runs,
                                                                       model, runs.lora), runs, judge)

    def _method(self, spec: dict):
        """The generator a named spec (synthesis.generators) runs."""
        from celadon.experiment.config import generator_method
        from celadon.synth.generate import get_generator

        return get_generator(generator_method(self.config.synthesis, spec))

    def _uses_lora(self, spec: dict) -> bool:
        """Whether a named generator's images come from the pipeline with the study's LoRA."""
        return self._method(spec).uses_pipeline and spec.get("lora", True)

    def _model_weights(self, model: str) -> str:
        from celadon.errors import CeladonError

        try:
            return model_fingerprint(model)
        except CeladonError as exc:
            if not self.dry_run:
                raise
            self.notes.append(f"synthesis.model: {exc}; a run would stop here")
            return "missing"

    def _generate(self, label: str, plan: Stage, spec: dict, runs: Runs, model: dict, trained: Stage) -> Stage:
        """One named generator (synthesis.generators) on one plan; img2img also reads the split's photos."""
        from celadon.synth.generate import GenerateConfig, generate, generator_settings

        s = self.config.synthesis
        method = self._method(spec)
        lora = trained if self._uses_lora(spec) else None
        model = model if method.uses_pipeline else {}  # the controls load no model
        config = make(GenerateConfig, s.generate | {k: v for k, v in spec.items() if k != "lora"}, model=s.model,
                      plan=plan.info["table"], lora=str(lora.path) if lora else None, threads=self.config.threads,
                      device=self.config.device,
                      real=runs.split.info["splits"], taxonomy=self.config.taxonomy)
        sources = [runs.split] if method.needs_sources else []
        settings = key_settings(config, generator_settings(config)) | model
        return self.stages.run("generate", settings, [plan] + ([lora] if lora else []) + sources, lambda p: {
            "table": str(generate(dataclasses.replace(config, out=str(p)), progress=self.progress))},
            f"generate {label}")

    def _qc(self, label: str, generation: Stage, runs: Runs, judge: Stage | None) -> Stage:
        from celadon.synth.qc import QCConfig, run_qc

        # an independent judge gates; the reference reads too, to count what it would have masked
        second = runs.reference if runs.judge is not runs.reference else None
        judges = [training for training, _ in runs.fold_judges]
        config = make(QCConfig, {"fidelity_tasks": self.taxonomy.combination} | self.config.synthesis.qc,
                      table=generation.info["table"],
                      real=runs.split.info["splits"], model_dir=str(runs.judge.path), taxonomy=self.config.taxonomy,
                      device=self.config.device, second_reader=str(second.path) if second else None,
                      fold_models=tuple(str(t.path) for t in judges),
                      folds=str(runs.judge_folds.path / "folds.csv") if runs.judge_folds else None,
                      judge_metrics=str(judge.path / "metrics.json") if judge else None)

        def work(path: Path) -> dict:
            summary = run_qc(dataclasses.replace(config, out=str(path)), progress=self.progress)
            return {"table": str(path / "qc.csv"), "generation": str(generation.path),
                    "pass_rate": summary["pass_rate"], "n_pass": summary["n_pass"]}

        unused = () if config.task_masks else ("task_masks",)  # absent when off: keys stay as they were
        return self.stages.run("qc", key_settings(config, drop=unused),
                               [generation, runs.split, runs.judge] + ([judge] if judge else [])
                               + ([second] if second else []) + judges[1:]
                               + ([runs.judge_folds] if runs.judge_folds else []), work,
                               f"QC {label}")

    def _curate(self, label: str, qc: Stage) -> Stage:
        """QC verdicts + review decisions -> accepted.csv. The decisions are part of the key: an image rejected
        in `celadon review serve` since redoes this stage, then the trainings of the arms that use it."""
        from celadon.review.store import rejected_items
        from celadon.synth.curate import CurateConfig, curate

        generation = qc.info["generation"]
        rejected = sorted(rejected_items(generation))
        config = CurateConfig(qc=qc.info["table"], generation=generation, taxonomy=self.config.taxonomy)

        def work(path: Path) -> dict:
            table = curate(dataclasses.replace(config, out=str(path)))
            return {"table": str(table), "n_accepted": json.loads((path / "curate.json").read_text())["accepted"]}

        return self.stages.run("curate", {"review_rejected": rejected}, [qc], work, f"curate {label}")

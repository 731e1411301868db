"""`celadon run CONFIG.yaml`: the paper's study as one command.

data -> split (-> augment) -> reference classifier (read on validation) -> select -> caption -> LoRA -> plans ->
generate (each arm's generator, and every generator on the compare plan for Table 6, plus an img2img strength
sweep) -> QC -> curate -> every arm x seed trained and evaluated on test -> imbalance before/after, t-SNE ->
results tables -> report.html. Each step is a content-addressed stage (`stages.py`) named as `identity.py` says.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import yaml

from celadon.experiment.config import Arm, StudyConfig
from celadon.experiment.identity import key_settings, make
from celadon.experiment.jobs import TrainingJob, job_count, run_trainings
from celadon.experiment.judge import JudgeStages
from celadon.experiment.stages import Stage, StageRunner
from celadon.experiment.synthesis import SynthesisStages, replicate_suffix
from celadon.runinfo import atomic_write_text, write_run_info
from celadon.taxonomy import Taxonomy, load_taxonomy


@dataclasses.dataclass
class Runs:
    """Every stage of one study, by role, for the results and report."""

    config: StudyConfig
    out: Path
    data: Stage
    split: Stage
    train_table: Path  # splits.csv or augmented.csv
    reference: Stage
    reference_eval: Stage
    selection: Stage | None = None
    judge: Stage | None = None  # reads synthetic images' labels (QC, Table 6): the reference, or its own render's
    judge_eval: Stage | None = None  # the judge on the study's validation photos
    judge_folds: Stage | None = None  # judge cross_fit: the folds of the training photos
    fold_judges: list[tuple[Stage, Stage]] = dataclasses.field(default_factory=list)  # cross_fit: (training, val)
    lora: Stage | None = None  # replicate 0's (Table 6, the sweep, the report's samples)
    loras: dict[int, Stage] = dataclasses.field(default_factory=dict)  # per synthesis replicate
    plans: dict[str, Stage] = dataclasses.field(default_factory=dict)
    generations: dict[str, Stage] = dataclasses.field(default_factory=dict)  # "B/lora", "B/vanilla"
    qc: dict[str, Stage] = dataclasses.field(default_factory=dict)
    sweep: dict[float, Stage] = dataclasses.field(default_factory=dict)  # strength -> QC of that generation
    curated: dict[str, Stage] = dataclasses.field(default_factory=dict)  # what the arms train on, per "plan/gen"
    trainings: dict[tuple[str, int], Stage] = dataclasses.field(default_factory=dict)
    evaluations: dict[tuple[str, int], Stage] = dataclasses.field(default_factory=dict)
    imbalance: dict[str, Stage] = dataclasses.field(default_factory=dict)  # "real", and per plan
    tsne: Stage | None = None
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)  # arm -> why it was not trained


class Study(SynthesisStages, JudgeStages):
    """The stage graph of one study. With `dry_run`, `run()` computes and writes nothing: every stage is reused
    when finished, else planned, and `stages.plan()` is what the study would do (`celadon run --dry-run`,
    `bench estimate`); `notes` says what a real run would refuse (a missing manifest or model)."""

    def __init__(self, config: StudyConfig, progress: bool = True, dry_run: bool = False):
        self.config, self.progress, self.dry_run = config, progress, dry_run
        self.out = Path(config.out).resolve()
        self.stages = StageRunner(self.out, log=(lambda _: None) if dry_run else print, dry=dry_run)
        self.cache_dir = str(self.out / "cache")
        self.notes: list[str] = []

    @functools.cached_property
    def taxonomy(self) -> Taxonomy:
        return load_taxonomy(self.config.taxonomy)

    # -- data ---------------------------------------------------------------------------------------------
    def data(self) -> Stage:
        from celadon.data.embedded import EmbeddedConfig

        if self.config.manifest:
            return self._user_manifest(Path(self.config.manifest))
        return self.render(make(EmbeddedConfig, self.config.embedded, workers=self.config.workers),
                           "render embedded dataset")

    def render(self, config, label: str) -> Stage:
        """A render of the embedded collection (the study's, or its judge's) as a data stage."""
        from celadon.data.embedded import make_demo

        return self.stages.run("data", key_settings(config, config.key_settings()) | self._taxonomy_key(), [],
                               lambda p: {"manifest": str(make_demo(p, config, progress=self.progress))}, label)

    def _taxonomy_key(self) -> dict:
        """The label vocabulary every stage reads, by content: an edited taxonomy YAML redoes everything."""
        import hashlib

        if not self.config.taxonomy:
            return {}
        self.taxonomy  # noqa: B018 - a missing or broken file fails here, with its own message
        from importlib import resources

        path = Path(self.config.taxonomy)
        if not path.is_file():  # a shipped taxonomy, by name
            path = resources.files("celadon.taxonomy").joinpath(self.taxonomy.source.removeprefix("celadon:"))
        return {"taxonomy": hashlib.sha256(path.read_bytes()).hexdigest()}

    def _user_manifest(self, manifest: Path) -> Stage:
        import hashlib

        from celadon.data.check import require_no_errors
        from celadon.data.validate import ValidationConfig, validate_manifest
        from celadon.errors import CeladonError

        if not manifest.exists() and self.dry_run:
            self.notes.append(f"manifest: {manifest} does not exist; a run would stop here")
            digest = "missing"
        elif not manifest.exists():
            raise CeladonError(f"manifest: {manifest} does not exist; fix the path in the config")
        else:
            digest = hashlib.sha256(manifest.read_bytes()).hexdigest()

        def work(path: Path) -> dict:
            report = validate_manifest(manifest, self.taxonomy,
                                       ValidationConfig(workers=self.config.workers, root=self.config.image_root),
                                       progress=self.progress)
            require_no_errors(report.problems, str(manifest))
            return {"manifest": str(manifest.resolve()), "rows": len(report.manifest)}

        root = {"image_root": self.config.image_root} if self.config.image_root else {}  # absent: keys as before
        return self.stages.run("data", {"manifest": str(manifest.resolve()), "sha256": digest} | self._taxonomy_key()
                               | root, [], work, "validate manifest")

    def split(self, data: Stage, label: str | None = None) -> Stage:
        """The study's split of a data stage (its own, or its judge's render, named by `label`)."""
        from celadon.data.check import ImageCheckConfig
        from celadon.data.split import SplitConfig, run_split

        config = make(SplitConfig, dict(self.config.split or {}), manifest=data.info["manifest"],
                      taxonomy=self.config.taxonomy)
        check = ImageCheckConfig(root=self.config.image_root)  # the study's image_root decides
        label = label or ("adaptive split + leakage check" if not config.keep_split
                          else f"split kept from {config.keep_split!r}")
        return self.stages.run("split", config.key_settings(), [data], lambda p: {"splits": str(run_split(
            config.manifest, self.taxonomy, p, dataclasses.replace(config, out=str(p)), progress=self.progress,
            check=check).path)}, label)

    def augment(self, split: Stage) -> Stage:
        from celadon.data.augment import AugmentConfig, augment_manifest
        from celadon.data.manifest import read_manifest

        config = make(AugmentConfig, self.config.augment or {})

        def work(path: Path) -> dict:
            manifest = read_manifest(split.info["splits"], self.taxonomy)
            table, plan = augment_manifest(manifest, path, config, progress=self.progress)
            return {"table": str(table), "copies": len(plan)}

        return self.stages.run("augment", key_settings(config), [split], work,
                               "threshold augmentation")

    def imbalance(self, name: str, split: Stage, curated: Stage | None) -> Stage:
        """Training-set imbalance (paper Tables 10-12): the real set, or real vs real + a curated synthetic set."""
        from celadon.classify.train import load_synthetic
        from celadon.data.imbalance import analyze_manifest
        from celadon.data.manifest import read_manifest, trained_labels

        def work(path: Path) -> dict:
            taxonomy = self.taxonomy
            real = read_manifest(split.info["splits"], taxonomy)
            real = real.subset(real.frame["split"] == "train")
            if curated is None:
                analyze_manifest(real, path)
            else:
                import pandas as pd

                synthetic = load_synthetic(curated.info["table"], taxonomy)  # labels only: reads no image
                mixed = real.with_frame(pd.concat([real.frame[real.tasks], trained_labels(synthetic)]))
                analyze_manifest(real, path, mixed, labels=("real", f"real + {name}"))
            return {}

        return self.stages.run("imbalance", {"set": name}, [split] + ([curated] if curated else []), work,
                               f"imbalance ({name})")

    # -- classifier ---------------------------------------------------------------------------------------
    def training(self, label: str, overrides: dict, seed: int, inputs: list[Stage], synthetic: Stage | None = None,
                 arm: Arm | None = None, splits: str | None = None, key: dict | None = None) -> TrainingJob:
        """One classifier's stage: its config (out set when it runs), key settings and inputs; `splits` another
        split table than the study's training table (the judge's own render, a cross-fitted judge's fold), and
        `key` what tells apart trainings whose inputs are the same stages (which fold a judge leaves out)."""
        from celadon.classify.train import TrainConfig

        overrides = overrides | (arm.classifier if synthetic and arm else {})  # how the arm treats synthetic rows
        config = make(TrainConfig, overrides, splits=splits or str(self.train_table), seed=seed,
                      cache_dir=self.cache_dir,
                      taxonomy=self.config.taxonomy,
                      synthetic=synthetic.info["table"] if synthetic else None,
                      synthetic_ratio=arm.ratio if synthetic and arm else 0.0,
                      synthetic_tasks=arm.tasks if synthetic and arm else None,
                      budget_ratio=max((a.ratio for a in self.config.arms if a.plan), default=0.0),
                      source_size=self._source_size,
                      threads=self.config.threads, device=self.config.device, log_tensorboard=False)
        # the taxonomy is in the data stage's key
        settings = key_settings(config, config.key_settings()) | (key or {})
        return TrainingJob(config, settings, inputs + ([synthetic] if synthetic else []), label, seed)

    @functools.cached_property
    def _source_size(self) -> int:
        """The square size every classifier image passes through: the arms' generators' resolution (the
        smallest), when the study trains on synthetic images; 0 when it does not."""
        from celadon.errors import CeladonError
        from celadon.synth.pipeline import resolve_profile

        s = self.config.synthesis
        sizes = []
        for arm in (a for a in self.config.arms if a.plan):
            size = int((s.generate | s.generators[arm.generator]).get("resolution") or 0)
            if not size:
                try:
                    size = resolve_profile(s.model).resolution
                except CeladonError:
                    if not self.dry_run:
                        raise
                    size = 512  # a plan without the weights: SD 1.5's own
            sizes.append(size)
        return min(sizes, default=0)

    def train_all(self, jobs: list[TrainingJob], split: str = "test") -> list[tuple[Stage, Stage]]:
        """Train (or reuse) classifiers, several at once where that is faster (`jobs`), and evaluate each on
        `split` as it finishes: test for the arms, read once at the end (validation in a development study);
        validation for the reference, whose evaluation steers selection, plans and QC."""
        results: dict[int, tuple[Stage, Stage]] = {}

        def evaluate(i: int, training: Stage) -> None:
            on = "" if split == "test" else f" on {split}"
            results[i] = training, self._evaluate(training, split, f"evaluate {jobs[i].name}{on} (seed {jobs[i].seed})")

        count = 1 if self.dry_run else job_count(self.config.jobs, self.config.device, self.config.devices, len(jobs))
        run_trainings(self.stages, jobs, count, self.config.threads, evaluate, self.config.devices)
        return [results[i] for i in range(len(jobs))]

    def _evaluate(self, training: Stage, split: str, label: str) -> Stage:
        from celadon.evaluate.run import EvaluateConfig, evaluate_model

        config = make(EvaluateConfig, self.config.evaluate, model_dir=str(training.path), split=split,
                      splits=str(self.split_table), cache_dir=self.cache_dir, threads=self.config.threads,
                      device=self.config.device)
        return self.stages.run("evaluate", key_settings(config), [training, self.split_stage],
                               lambda p: {"mean_f1_macro": evaluate_model(dataclasses.replace(config, out=str(p)),
                                                                          progress=self.progress)["mean_f1_macro"]},
                               label)

    # -- the whole study ----------------------------------------------------------------------------------
    def run(self) -> Runs:
        config = self.config
        if not self.dry_run:
            self.out.mkdir(parents=True, exist_ok=True)
            write_run_info(self.out, "run", config, config.seeds[0])
            atomic_write_text(self.out / "config.yaml", yaml.safe_dump(dataclasses.asdict(config), sort_keys=False,
                                                                       allow_unicode=True))
        data = self.data()
        self.split_stage = split = self.split(data)
        self.split_table = self.train_table = Path(split.info["splits"])
        self.pool = [split]  # the stages training data comes from
        if config.augment is not None:
            augmented = self.augment(split)
            self.train_table = Path(augmented.info["table"])
            self.pool.append(augmented)
        reference_settings = config.synthesis.reference or config.classifier
        # Evaluated on validation: its confusion pairs steer selection and plans and it judges QC, so no test
        # label reaches any decision that shapes training.
        [(reference, reference_eval)] = self.train_all(
            [self.training("reference", reference_settings, config.seeds[0], self.pool)], split="val")
        runs = Runs(config, self.out, data, split, self.train_table, reference, reference_eval)
        runs.imbalance["real"] = self.imbalance("real", split, None)
        if any(arm.plan for arm in config.arms) or config.synthesis.compare_plan:
            runs.judge, runs.judge_eval = self.judge(runs)
            self.synthesis(runs)
        jobs: list[tuple[tuple[str, int], TrainingJob]] = []  # every arm x seed, trained together at the end
        for arm in config.arms:
            curated: dict[int, Stage] = {}  # per synthesis replicate; the arm's seeds cycle over them
            for replicate in range(config.synthesis.replicates if arm.plan else 0):
                key = f"{arm.plan}/{arm.generator}{replicate_suffix(replicate)}"
                if key not in runs.curated:
                    runs.curated[key] = self._curate(key, runs.qc[key])
                curated[replicate] = runs.curated[key]
            empty = [r for r, stage in curated.items() if not stage.info.get("n_accepted")]
            if empty:
                key = f"{arm.plan}/{arm.generator}{replicate_suffix(empty[0])}"
                runs.skipped[arm.name] = f"no image of {key} passed QC and review"
                print(f"arm {arm.name}: skipped, {runs.skipped[arm.name]}")
                continue
            if curated and arm.plan not in runs.imbalance:
                runs.imbalance[arm.plan] = self.imbalance(arm.plan, split, curated[0])
            jobs += [((arm.name, seed), self.training(arm.name, config.classifier, seed, self.pool,
                                                      curated[i % len(curated)] if curated else None, arm))
                     for i, seed in enumerate(config.seeds)]
        arms = self.train_all([job for _, job in jobs], split=config.endpoint_split)
        for (key, _), (training, evaluation) in zip(jobs, arms, strict=True):
            runs.trainings[key], runs.evaluations[key] = training, evaluation
        if runs.qc:
            runs.tsne = self._tsne(runs)
        return runs

    def _tsne(self, runs: Runs) -> Stage:
        from celadon.evaluate.embeddings import tsne_real_vs_synthetic

        first = {key: stage for key, stage in runs.generations.items() if "#" not in key}  # replicate 0's
        sets = {key: stage.info["table"] for key, stage in first.items()}
        settings = {"per_set": self.config.tsne_per_set, "seed": self.config.seeds[0]}
        return self.stages.run("tsne", settings, [runs.split, *first.values()], lambda p: {
            "plot": str(tsne_real_vs_synthetic(runs.split.info["splits"], sets, p, self.config.tsne_per_set,
                                               self.config.seeds[0], self.config.taxonomy,
                                               device=self.config.device))},
            "t-SNE real vs synthetic")

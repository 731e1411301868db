"""Who reads synthetic images' labels (QC's gates and task masks, Table 6, the sweep): `synthesis.judge`.

- `reference` (the default so far): the reference classifier. It trained on the real training photos, the very
  photos img2img re-renders and the LoRA learns from, so it reads a near copy of its own training photo
  better than an unseen validation photo of the same labels: it is *not* an independent judge, and results
  say so.
- `own_render` (embedded collections): a classifier trained on a render of its own: the collection's labels,
  row for row, drawn as other objects (the renderer's pixel seed `image_seed`, the collection's seed plus
  7919; `judge_render` overrides), so it shares no image with the collection: none of the generators'
  sources, none of the LoRA's training photos. Its training set has the reference's labels exactly (the same
  long tail, the same split), so the two judges differ in which photos they saw and in nothing else: the
  difference in their readings is the bias the independence removes. (A render with another label seed
  would also change which combinations are common: such a judge read type at 48 % on the demo's validation
  photos against the reference's 83 %.) It is trained like the reference (its own validation photos stop it
  early) and then read on the *study's* validation photos: the real-photo column of Table 6 and QC's
  per-class trust.

- `cross_fit` (any collection, the way for the user's own photos, which have no second render): K judges,
  judge i trained without fold i of the training photos (`judge_folds`, celadon.data.folds: copies in one
  fold, combinations stratified). QC reads each img2img item with the judge whose training left out its
  source photo's fold, so no judge reads a re-rendering of a photo it trained on; an item without a source
  (txt2img's) is read by judge 0, which did see the photos the LoRA learnt from, and results say so. The
  real-photo column of Table 6 is the same K judges on the study's validation photos, pooled.
"""

from __future__ import annotations

from celadon.errors import CeladonError
from celadon.experiment.identity import make
from celadon.experiment.stages import Stage

JUDGES = ("reference", "own_render", "cross_fit")
JUDGE_SEED_OFFSET = 7919  # the judge's pixel seed: the collection's seed plus this, unless judge_render sets one


def check_judge(config) -> None:
    """A one-line error for a judge the study cannot have."""
    s = config.synthesis
    if s.judge not in JUDGES:
        raise CeladonError(f"synthesis.judge: {s.judge!r} is not one of {', '.join(JUDGES)}")
    if s.judge_render and s.judge != "own_render":
        raise CeladonError("synthesis.judge_render: applies to judge: own_render; remove it or set the judge")
    if s.judge == "own_render" and config.manifest:
        raise CeladonError("synthesis.judge: own_render draws a second embedded collection; a study of your own "
                           "photos cannot: use judge: cross_fit (K judges, each without one fold of the photos)")
    if s.judge_folds < 2:
        raise CeladonError(f"synthesis.judge_folds: {s.judge_folds}: cross-fitting needs at least 2 folds")
    if s.judge == "cross_fit" and s.qc.get("judge_min_recall"):
        raise CeladonError("synthesis.qc.judge_min_recall: per-class trust reads one judge's validation recall; "
                           "with judge: cross_fit use qc.task_masks instead")


def judge_render_config(config):
    """The EmbeddedConfig of the judge's own render: the collection's labels, its own pixels."""
    from celadon.data.embedded import EmbeddedConfig

    collection = make(EmbeddedConfig, config.embedded, workers=config.workers)
    pixels = collection.seed + JUDGE_SEED_OFFSET
    return make(EmbeddedConfig, {**config.embedded, "image_seed": pixels, **config.synthesis.judge_render},
                workers=config.workers)


class JudgeStages:
    """A mixin of `runner.Study`: the judge's stages, or the reference when the study keeps it as judge."""

    def judge(self, runs) -> tuple[Stage, Stage]:
        """(the judge's training, its reading of the study's validation photos); cross-fitted judges also set
        `runs.judge_folds` (the folds stage) and `runs.fold_judges` (each judge's training and evaluation)."""
        if self.config.synthesis.judge == "reference":
            return runs.reference, runs.reference_eval
        if self.config.synthesis.judge == "cross_fit":
            return self._cross_fitted(runs)
        data = self.render(judge_render_config(self.config), "render the judge's own collection")
        split_stage = self.split(data, "split the judge's collection")
        settings = self.config.synthesis.reference or self.config.classifier
        job = self.training("judge (own render)", settings, self.config.seeds[0], [split_stage],
                            splits=split_stage.info["splits"])
        [(training, evaluation)] = self.train_all([job], split="val")  # read on the study's validation photos
        return training, evaluation

    def _cross_fitted(self, runs) -> tuple[Stage, Stage]:
        from celadon.data.folds import write_fold_tables
        from celadon.data.manifest import read_manifest

        k, seed = self.config.synthesis.judge_folds, self.config.seeds[0]
        runs.judge_folds = self.stages.run("folds", {"k": k, "seed": seed}, list(self.pool), lambda p: (
            write_fold_tables(read_manifest(self.train_table, self.taxonomy), p, k, seed, progress=self.progress)),
            f"cross-fitting folds of the training photos ({k})")
        settings = self.config.synthesis.reference or self.config.classifier
        tables = runs.judge_folds.info.get("tables") or [None] * k  # a dry run plans before the folds exist
        jobs = [self.training(f"judge without fold {i}", settings, seed, [*self.pool, runs.judge_folds],
                              splits=tables[i] or f"{runs.judge_folds.path}/without_fold_{i}.csv",
                              key={"without_fold": i}) for i in range(k)]
        runs.fold_judges = self.train_all(jobs, split="val")  # each read on the study's validation photos
        return runs.fold_judges[0]


def judge_readings(runs):
    """The judge's readings of the study's validation photos (cross-fitted judges: all of them, pooled)."""
    import pandas as pd

    from celadon.evaluate.resample import read_predictions

    evaluations = [e for _, e in runs.fold_judges] if runs.fold_judges else [runs.judge_eval]
    return pd.concat([read_predictions(e.path) for e in evaluations], ignore_index=True)


def describe_judge(runs) -> dict:
    """What results.json says of the judge: what it trained on, and its top-1 on the study's validation photos."""
    import json

    from celadon.evaluate.run import load_metrics

    metrics = load_metrics(runs.judge_eval.path)
    top1 = {task: values["top1"] for task, values in metrics["tasks"].items()}
    if runs.config.synthesis.judge == "reference":
        return {"kind": "reference", "independent": False, "validation_top1": top1,
                "trained_on": "the study's real training photos: the photos img2img starts from and the LoRA "
                              "learns from"}
    if runs.config.synthesis.judge == "cross_fit":
        folds = runs.judge_folds.info
        return {"kind": "cross_fit", "independent": True, "folds": len(runs.fold_judges),
                "photos_per_fold": folds["photos_per_fold"], "validation_top1": top1,
                "validation_top1_per_judge": [
                    {t: v["top1"] for t, v in load_metrics(e.path)["tasks"].items()} for _, e in runs.fold_judges],
                "trained_on": "the study's training photos less one fold each; every img2img item is read by the "
                              "judge whose training left out its source photo's fold. Items without a source photo "
                              "(txt2img) are read by judge 0, which saw the photos the LoRA learnt from: for them "
                              "the judge is not independent"}
    stage = json.loads((runs.judge.path / "stage.json").read_text(encoding="utf-8"))
    render = judge_render_config(runs.config)
    return {"kind": "own_render", "independent": True, "validation_top1": top1,
            "render": {"seed": render.seed, "image_seed": render.image_seed, "n": render.n, "size": render.size},
            "stage": runs.judge.path.name,
            "trained_on": f"the collection's labels drawn as other objects (image seed {render.image_seed}): no "
                          "image of the collection",
            "real_presentations": stage["summary"].get("real_presentations")}

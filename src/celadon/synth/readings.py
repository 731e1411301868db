"""How QC's judge, and a second reader, read synthetic images (and img2img's source photos).

The judge is the classifier whose reading gates and masks labels (`QCConfig.model_dir`); a second reader (the
reference classifier, when the judge is independent of the photos the generators start from) reads the same
images so the summary can count what gating on it would have masked.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from PIL import Image

from celadon.data.manifest import JUDGE_CONFIDENCE, Manifest
from celadon.errors import CeladonError


def read_images(loaded, synthetic: Manifest, images: dict[int, Image.Image], tasks: list[str],
                confidence: dict[str, list] | None = None) -> dict[str, list]:
    """A loaded classifier's top-1 reading of each decoded image, per task (None where an image is unreadable);
    into `confidence`, when given, the probability it gives each item's own label (None where it has none)."""
    from celadon.classify.predict import predict_images

    readable = sorted(images)
    paths = [synthetic.image_path(i) for i in readable]
    results, _ = predict_images(loaded, paths, top_k=10**6) if readable else ([], [])  # every class, ranked
    values: dict[str, list] = {t: [None] * len(synthetic) for t in tasks if t in loaded.model.task_names}
    if confidence is not None:  # every task gets its column, even where this reader reads no image
        for task in values:
            confidence.setdefault(task, [None] * len(synthetic))
    for i, row in zip(readable, results, strict=True):
        for task in values:
            values[task][i] = row[task][0][0]
            if confidence is not None:
                confidence[task][i] = dict(row[task]).get(synthetic.frame[task].iat[i])
    return values


def label_fidelity(synthetic: Manifest, images: dict[int, Image.Image], config, reasons: list[list[tuple[str, str]]],
                   device: str, true_labels: list[bool]) -> tuple[dict[str, list], dict[str, list], dict[str, list]]:
    """The judge's reading of each image and of each img2img source photo, and the columns qc.csv adds: the
    probability the judge gives each item's own label (`judge_p_<task>`, for `synthetic_confidence`) and
    (cross-fitted judges) which judge read each image; a wrong label is a reason, except on a control's image,
    whose labels are true by construction (its reading is the judge's own ceiling)."""
    if not config.model_dir:
        return {}, {}, {}
    from celadon.classify.predict import load_model

    models = [load_model(m, device) for m in (config.fold_models or [config.model_dir])]
    judge, excluded = _judge_per_item(synthetic, config)
    tasks = [t for t in config.fidelity_tasks if t in models[0].model.task_names]
    predictions: dict[str, list] = {t: [None] * len(synthetic) for t in tasks}
    confidence = {t: [None] * len(synthetic) for t in tasks}  # the judge's probability of the item's own label
    for j, loaded in enumerate(models):
        read: dict[str, list] = {}
        for task, values in read_images(loaded, synthetic, {i: im for i, im in images.items() if judge[i] == j},
                                        tasks, read).items():
            predictions[task] = [v if judge[i] == j else predictions[task][i] for i, v in enumerate(values)]
            confidence[task] = [p if judge[i] == j else confidence[task][i] for i, p in enumerate(read[task])]
    recall = judge_recall(config, tasks)
    for task, values in predictions.items():
        for i, predicted in enumerate(values):
            intended = synthetic.frame[task].iat[i]
            if predicted is None or intended is None or true_labels[i]:
                continue
            trusted = task not in recall or recall[task].get(intended, 0.0) >= config.judge_min_recall
            if predicted != intended and (trusted or config.task_masks):  # a mask needs no trust
                reasons[i].append((f"wrong_{task}", f"{task} looks like {predicted}, intended {intended}"))
    columns = {"judge_fold": judge, "judge_excluded_source": excluded} if config.fold_models else {}
    columns |= {f"{JUDGE_CONFIDENCE}{task}": [None if p is None else round(p, 4) for p in values]
                for task, values in confidence.items()}
    return predictions, judge_sources(models, judge, synthetic, tasks), columns


def _judge_per_item(synthetic: Manifest, config) -> tuple[list[int], list]:
    """Which judge reads each item: with cross-fitted judges, the one whose training left out the fold of the
    item's source photo (and whether one did: an item without a source photo, txt2img's, is read by judge 0,
    which saw the photos the LoRA learnt from); with one judge, that one."""
    if not config.fold_models:
        return [0] * len(synthetic), [None] * len(synthetic)
    from celadon.data.folds import read_folds
    from celadon.data.manifest import SOURCE_COLUMN, resolve_image_path

    folds = read_folds(config.folds)
    column = synthetic.frame.get(SOURCE_COLUMN)
    judge, excluded = [], []
    for i in range(len(synthetic)):
        source = column.iat[i] if column is not None else None
        fold = folds.get(str(resolve_image_path(synthetic.root, source).resolve())) \
            if isinstance(source, str) and source else None
        judge.append(0 if fold is None else fold)
        excluded.append(fold is not None)
    return judge, excluded


def second_reading(synthetic: Manifest, images: dict[int, Image.Image], config, device: str,
                   tasks: list[str]) -> dict[str, list]:
    """The second reader's reading of each image (nothing without one)."""
    if not config.second_reader or not tasks:
        return {}
    from celadon.classify.predict import load_model

    return read_images(load_model(config.second_reader, device), synthetic, images, tasks)


def confirmed_misreads(table: pd.DataFrame, tasks: list[str]) -> dict[str, dict[str, int]]:
    """Per task: labels the judge confirms, and how many of them the second reader (the reference) reads
    otherwise: what gating on the reference would have masked although an independent judge reads them."""
    counts = {}
    for task in tasks:
        labelled = table[task].notna() & (table[task].astype(str) != "")
        confirmed = labelled & (table[f"pred_{task}"] == table[task])
        second = table[f"second_pred_{task}"] == table[task]
        counts[task] = {"judge_confirms": int(confirmed.sum()),
                        "second_reader_misreads": int((confirmed & ~second).sum()),
                        "second_reader_agrees_judge_rejects": int((labelled & ~confirmed & second).sum())}
    return counts


def judge_sources(models: list, judge: list[int], synthetic: Manifest, tasks: list[str]) -> dict[str, list]:
    """Each item's judge's reading of its img2img source photo: what it saw before re-rendering (a source it
    misreads bounds what the re-rendered image can score)."""
    from celadon.classify.predict import predict_images
    from celadon.data.manifest import SOURCE_COLUMN, resolve_image_path

    column = synthetic.frame.get(SOURCE_COLUMN)
    if column is None or not column.map(lambda s: isinstance(s, str) and bool(s)).any():
        return {}
    paths = [resolve_image_path(synthetic.root, s) if isinstance(s, str) and s else None for s in column]
    read: dict[tuple[int, Path], dict] = {}
    for j, loaded in enumerate(models):
        unique = sorted({p for p, by in zip(paths, judge, strict=True) if p is not None and by == j})
        results, errors = predict_images(loaded, unique, top_k=1) if unique else ([], [])
        if errors:  # _source_copies has checked they decode; a failure here is a real problem
            raise CeladonError(f"{synthetic.source}: {errors[0]}")
        read |= {(j, Path(r["image"])): r for r in results}
    return {t: [read[j, p][t][0][0] if p is not None else None for p, j in zip(paths, judge, strict=True)]
            for t in tasks}


def agreement_rates(table: pd.DataFrame, tasks: list[str], prefix: str) -> dict[str, float]:
    """Per task, and jointly (the paper's "correct glaze-type combination"), how often the judge's reading in
    the `prefix<task>` columns (of the images, or of their source photos) matches the intended labels, over
    the rows that have both."""
    from celadon.evaluate.fidelity import agreement

    readings = table[tasks].join(table[[f"{prefix}{t}" for t in tasks]].rename(
        columns=lambda c: "pred_" + c.removeprefix(prefix)))
    groups = [[t] for t in tasks] + ([tasks] if len(tasks) > 1 else [])
    rates = {"+".join(g): agreement(readings, g).mean() for g in groups}
    return {k: float(v) for k, v in rates.items() if pd.notna(v)}


def judge_recall(config, tasks: list[str]) -> dict[str, dict[str, float]]:
    """Per task and class, the judge's recall on real photos (classes it never saw there: 0)."""
    if not config.judge_min_recall:
        return {}
    if not config.judge_metrics or not Path(config.judge_metrics).exists():
        raise CeladonError(f"judge_min_recall {config.judge_min_recall} needs the judge's metrics.json on real "
                           "validation photos (`celadon evaluate MODEL SPLITS --split val`); "
                           f"got {config.judge_metrics}")
    from celadon.evaluate.run import load_decision_metrics

    metrics = load_decision_metrics(config.judge_metrics, config.allow_test_metrics)["tasks"]
    return {t: {c: v["recall"] for c, v in metrics[t]["per_class"].items()} for t in tasks if t in metrics}

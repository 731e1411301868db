"""`celadon synth qc`: automatic quality control of synthetic images before they may reach training.

Per image: integrity (decodes, expected size, not blank), image statistics against the real training
distribution (robust z-scores of brightness, contrast, saturation, sharpness: an image that no longer looks
like a photo of a vessel), memorisation (near copy of a real training image, or of its own img2img source
photo) and duplicates among the synthetic set, and label fidelity (a reference classifier trained on real
data agrees with the intended labels; for img2img it also reads each source photo, `source_pred_<task>`, so
a label lost in re-rendering can be told from one the judge never saw). Per set: FID and KID against the
real images.

With `task_masks`, a label the judge reads differently does not fail the image: it masks that task, and
`qc_tasks` names the tasks the image may train: those the judge confirmed, and (for img2img) those it
inherits unchanged from its source photo. An image fails when no task is left.
Writes `qc.csv` (the table + `qc_pass`, `qc_reasons`, predictions) which `celadon synth curate` reads.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from celadon.data.check import scan_paths
from celadon.data.duplicates import DEFAULT_NEAR_DISTANCE, find_duplicates, is_near_copy
from celadon.data.images import ImageInfo, ImageReadError, load_image
from celadon.data.manifest import Manifest, read_manifest, write_manifest
from celadon.device import resolve_device
from celadon.errors import CeladonError
from celadon.runinfo import write_json, write_run_info
from celadon.synth.readings import agreement_rates, confirmed_misreads, label_fidelity, second_reading
from celadon.taxonomy import load_taxonomy

STATS_SIZE = 128  # statistics are compared at one resolution (sharpness depends on it)
STATISTICS = ("brightness", "contrast", "saturation", "sharpness")


@dataclass
class QCConfig:
    table: str = ""  # synthetic images: a manifest with the intended labels (plus prompt, seed, ...)
    real: str = ""  # the real splits.csv; its training rows are the reference
    out: str = ""  # where qc.csv and qc_summary.json go
    model_dir: str | None = None  # a reference classifier trained on real data (celadon train), the judge
    # a second reader, when the judge is independent: the reference classifier (trained on the photos the
    # generators start from); the summary counts the labels the judge confirms that it misreads
    second_reader: str | None = None
    # cross-fitted judges (a collection with no second render): judge i trained without fold i of the training
    # photos (folds.csv, celadon.data.folds); an item is read by the judge that left out its source's fold
    fold_models: tuple[str, ...] = ()
    folds: str | None = None
    judge_metrics: str | None = None  # the judge's metrics.json on real validation photos (evaluate --split val)
    judge_min_recall: float = 0.0  # fail a wrong label only where the judge's val recall of the class is this high
    allow_test_metrics: bool = False  # accept a test-split judge_metrics (test labels then gate training images)
    fidelity_tasks: tuple[str, ...] | None = None  # None: the taxonomy's combination role
    task_masks: bool = False  # a wrong label masks its task (qc_tasks) instead of failing the image
    expected_size: int | None = None  # required image side in pixels; None accepts any
    min_contrast: float = 2.0  # grey-level std below which an image is blank
    outlier_z: float = 4.0  # robust z-score beyond which a statistic is an outlier
    near_distance: int = DEFAULT_NEAR_DISTANCE  # pHash bits within which two images are near copies
    max_real_reference: int = 600  # real images sampled for statistics (training) and FID/KID (validation)
    inception: str | None = None  # local Inception-v3 weights for FID/KID; default EfficientNet-Lite0 features
    taxonomy: str | None = None
    seed: int = 0  # of the real sample and KID's subsets
    device: str = "auto"  # for the judge and FID/KID features: auto (the GPU when there is one), cpu, cuda, cuda:N


def image_statistics(img: Image.Image) -> dict[str, float]:
    """Brightness (mean luma), contrast (luma std), saturation (mean HSV S), sharpness (Laplacian variance)."""
    rgb = np.asarray(img.resize((STATS_SIZE, STATS_SIZE), Image.BILINEAR), dtype=np.float64)
    luma = rgb @ np.array([0.299, 0.587, 0.114])
    top, bottom = rgb.max(axis=2), rgb.min(axis=2)
    laplacian = (luma[:-2, 1:-1] + luma[2:, 1:-1] + luma[1:-1, :-2] + luma[1:-1, 2:] - 4 * luma[1:-1, 1:-1])
    return {"brightness": float(luma.mean()), "contrast": float(luma.std()),
            "saturation": float(np.where(top > 0, (top - bottom) / np.maximum(top, 1e-9), 0).mean()),
            "sharpness": float(laplacian.var())}


def robust_z(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(x - median) / (1.4826 MAD) of the reference; falls back to the std when the MAD is 0."""
    median = np.median(reference)
    scale = 1.4826 * np.median(np.abs(reference - median)) or reference.std() or 1.0
    return (values - median) / scale


def _originals(real: Manifest, split: str) -> Manifest:
    """The real originals (no offline augmentation) of one split; every row where there is no split column."""
    frame = real.frame
    keep = (frame["split"] == split).to_numpy() if "split" in frame else np.ones(len(frame), dtype=bool)
    return real.subset(keep & (real.augmentation_seeds() < 0))


def _sample(images: Manifest, limit: int, seed: int) -> Manifest:
    if len(images) > limit:
        rows = np.sort(np.random.default_rng(seed).choice(len(images), limit, replace=False))
        images = images.subset(np.isin(np.arange(len(images)), rows))
    return images


def run_qc(config: QCConfig, progress: bool = True) -> dict:
    taxonomy = load_taxonomy(config.taxonomy)
    if config.fidelity_tasks is None:
        config = replace(config, fidelity_tasks=taxonomy.combination)
    device = resolve_device(config.device)  # a missing GPU fails before any work
    synthetic = read_manifest(config.table, taxonomy)
    if len(synthetic) == 0:
        raise CeladonError(f"{config.table}: no synthetic images to check")
    real = read_manifest(config.real, taxonomy)
    originals = _originals(real, "train")  # the copy check reads them all
    if len(originals) < 2:
        raise CeladonError(f"{real.source}: needs at least 2 real training images as the QC reference")
    reference = _sample(originals, config.max_real_reference, config.seed)  # statistics
    held_out = _originals(real, "val")  # FID/KID; a table without validation rows falls back to training photos
    distance_split = "val" if len(held_out) >= 2 else "train"
    held_out = _sample(held_out if distance_split == "val" else originals, config.max_real_reference, config.seed)
    reasons: list[list[tuple[str, str]]] = [[] for _ in range(len(synthetic))]  # (kind, message) per image

    # Integrity, and hashes for duplicate checks, in one decoding pass over both sets.
    synthetic_infos = scan_paths(synthetic.image_paths(), progress=progress)
    real_infos = scan_paths(originals.image_paths(), progress=progress)
    images: dict[int, Image.Image] = {}
    for i, info in enumerate(synthetic_infos):
        if isinstance(info, ImageReadError):
            reasons[i].append(("unreadable", f"unreadable: {info.detail}"))
            continue
        if config.expected_size and (info.width, info.height) != (config.expected_size,) * 2:
            reasons[i].append(("wrong_size", f"size {info.width}x{info.height}, expected {config.expected_size}"))
        images[i] = load_image(synthetic.image_path(i))

    # Statistics against the real distribution.
    real_stats = pd.DataFrame([image_statistics(load_image(p)) for p in reference.image_paths()])
    stats = pd.DataFrame({i: image_statistics(img) for i, img in images.items()}).T.reindex(range(len(synthetic)))
    for name in STATISTICS:
        z = robust_z(stats[name].to_numpy(), real_stats[name].to_numpy())
        for i in np.flatnonzero(np.abs(np.nan_to_num(z)) > config.outlier_z):
            reasons[i].append((f"{name}_outlier", f"{name} outlier (z={z[i]:+.1f})"))
    for i in images:
        if stats.at[i, "contrast"] < config.min_contrast:
            reasons[i].append(("blank", "blank (no contrast)"))

    # Memorised copies of real training images, and duplicates within the synthetic set (replay's are by design).
    true_labels, by_design = _control_rows(synthetic)
    n_real = len(originals)
    infos = [i if isinstance(i, ImageInfo) else None for i in [*real_infos, *synthetic_infos]]
    real_paths = [str(p) for p in originals.frame["path"]]
    for pair in find_duplicates(infos, config.near_distance):
        if pair.second < n_real:
            continue
        second = pair.second - n_real
        if by_design[second]:
            continue
        if pair.first < n_real:
            reasons[second].append(("memorised", f"copy of real training image {real_paths[pair.first]}"))
        else:
            first = synthetic.frame["path"].iat[pair.first - n_real]
            reasons[second].append(("duplicate", f"duplicate of synthetic {first}"))

    source_bits = _source_copies(synthetic, synthetic_infos, config, reasons, by_design)
    masked: list[list[tuple[str, str]]] = [[] for _ in range(len(synthetic))]
    predictions, source_predictions, judges = label_fidelity(
        synthetic, images, config, masked if config.task_masks else reasons, device, true_labels)
    table = synthetic.frame.copy()
    if source_bits is not None:
        table["source_distance"] = source_bits
    if config.task_masks:
        table["qc_tasks"] = _verified_tasks(synthetic, predictions, reasons, true_labels)
    for name in STATISTICS:
        table[name] = stats[name].round(3).to_numpy()
    for task, values in predictions.items():
        table[f"pred_{task}"] = values
    for task, values in source_predictions.items():
        table[f"source_pred_{task}"] = values
    for column, values in judges.items():
        table[column] = values
    second = second_reading(synthetic, images, config, device, list(predictions))
    for task, values in second.items():
        table[f"second_pred_{task}"] = values
    table["qc_pass"] = [not r for r in reasons]
    table["qc_reasons"] = ["; ".join(message for _, message in r) for r in reasons]
    if config.task_masks:
        table["qc_masked"] = ["; ".join(message for _, message in m) for m in masked]
    out = Path(config.out)
    write_manifest(synthetic.with_frame(table), out / "qc.csv")
    summary = _summary(table, reasons, agreement_rates(table, list(predictions), "pred_"),
                       [load_image(p) for p in held_out.image_paths()], images, config, device)
    summary |= {"copy_check_originals": len(originals), "statistics_reference": len(reference),
                "distance_reference": {"split": distance_split, "images": len(held_out)}}
    if source_predictions:
        summary["source_fidelity"] = agreement_rates(table, list(source_predictions), "source_pred_")
    if second:
        summary["second_reader"] = confirmed_misreads(table, list(second))
    write_json(out / "qc_summary.json", summary)
    write_run_info(out, "synth qc", asdict(config), config.seed, device)
    return summary


def _control_rows(synthetic: Manifest) -> tuple[list[bool], list[bool]]:
    """Per image, whether its generator draws true labels by construction (oracle, replay) and whether its
    images are training photos again by design (replay): `generate.GENERATORS` says."""
    from celadon.synth.generate import GENERATORS

    names = synthetic.frame.get("generator")
    methods = [GENERATORS.get(str(n)) if isinstance(n, str) else None for n in
               (names if names is not None else [None] * len(synthetic))]
    return ([bool(m and m.true_labels) for m in methods], [bool(m and m.copies_by_design) for m in methods])


def _source_copies(synthetic: Manifest, infos: list, config: QCConfig, reasons: list[list[tuple[str, str]]],
                   by_design: list[bool]) -> list | None:
    """An img2img image that is a near copy of its own source photo fails (too little was re-rendered); the
    pHash distance to the source, per image, for the strength sweep."""
    from celadon.data.manifest import SOURCE_COLUMN, resolve_image_path

    if SOURCE_COLUMN not in synthetic.frame or synthetic.frame[SOURCE_COLUMN].isna().all():
        return None
    column = synthetic.frame[SOURCE_COLUMN]
    wanted = sorted({str(resolve_image_path(synthetic.root, s)) for s in column if isinstance(s, str) and s})
    found = dict(zip(wanted, scan_paths([Path(s) for s in wanted], progress=False), strict=True))
    bits: list = [None] * len(synthetic)
    for i, (source, info) in enumerate(zip(column, infos, strict=True)):
        if not isinstance(source, str) or not source or not isinstance(info, ImageInfo):
            continue
        path = str(resolve_image_path(synthetic.root, source))
        original = found[path]
        if not isinstance(original, ImageInfo):
            raise CeladonError(f"{config.table}: source photo {path} of {synthetic.frame['path'].iat[i]} is "
                               f"unreadable ({original.detail})")
        copy, bits[i] = is_near_copy(info, original, config.near_distance)
        if copy and not by_design[i]:
            reasons[i].append(("copy_of_source", f"near copy of its source photo {path} ({bits[i]} bits)"))
    return bits


def _verified_tasks(synthetic: Manifest, predictions: dict[str, list], reasons: list[list[tuple[str, str]]],
                    true_labels: list[bool]) -> list[str]:
    """Per image, the tasks QC can vouch for: the judge agrees, or (tasks the judge does not check) the label
    is unchanged from the img2img source photo; every labelled task of a control's image (true by
    construction). No task left fails the image."""
    from celadon.synth.sources import SHARED_COLUMN

    shared = synthetic.frame.get(SHARED_COLUMN)
    verified = []
    for i, row in enumerate(synthetic.frame[synthetic.tasks].to_dict("records")):
        inherited = set(str(shared.iat[i]).split(",")) if shared is not None and isinstance(shared.iat[i], str) \
            else set()
        tasks = [t for t in synthetic.tasks if row[t] is not None and (
            true_labels[i] or (predictions[t][i] == row[t] if t in predictions else t in inherited))]
        if not tasks and not any(kind == "unreadable" for kind, _ in reasons[i]):
            reasons[i].append(("no_verified_task", "no label could be verified"))
        verified.append(",".join(tasks))
    return verified


def _summary(table: pd.DataFrame, reasons: list[list[tuple[str, str]]], fidelity: dict[str, float],
             real_images: list[Image.Image], images: dict[int, Image.Image], config: QCConfig, device: str) -> dict:
    from celadon.data.images import resize_square
    from celadon.evaluate.distances import image_distances

    counts: dict[str, int] = {}
    for row in reasons:
        for kind in {kind for kind, _ in row}:
            counts[kind] = counts.get(kind, 0) + 1
    size = 128
    real = np.stack([resize_square(img, size) for img in real_images])
    fake = np.stack([resize_square(images[i], size) for i in sorted(images)]) if images else np.zeros((0,))
    distances = (asdict(image_distances(real, fake, config.inception, seed=config.seed,
                                        device=device)) if len(fake) >= 2 else None)
    return {"n_images": len(table), "n_pass": int(table["qc_pass"].sum()),
            "pass_rate": float(table["qc_pass"].mean()), "reasons": dict(sorted(counts.items())),
            "label_fidelity": fidelity, "distances": distances}


def compare_qc(runs: dict[str, str | Path]) -> pd.DataFrame:
    """The paper's Table 6 for any number of QC runs on the same plan (e.g. vanilla vs LoRA): FID, KID,
    label fidelity per task and joint, pass rate, one column per run."""
    import json

    columns = {}
    for name, folder in runs.items():
        path = Path(folder) / "qc_summary.json"
        if not path.exists():
            raise CeladonError(f"{folder}: no qc_summary.json; run `celadon synth qc` there first")
        summary = json.loads(path.read_text())
        column = {"images": summary["n_images"], "QC pass rate": summary["pass_rate"]}
        if summary.get("distances"):
            d = summary["distances"]
            against = summary.get("distance_reference", {}).get("split", "train")
            column[f"FID vs {against} photos ({d['features']})"] = d["fid"]
            column["KID"] = d["kid_mean"]
            column["KID std"] = d["kid_std"]
        column.update({f"label fidelity {task}": rate for task, rate in summary["label_fidelity"].items()})
        column.update({f"source photos: label fidelity {task}": rate  # img2img: the judge on what it started from
                       for task, rate in summary.get("source_fidelity", {}).items()})
        columns[name] = column
    return pd.DataFrame(columns)

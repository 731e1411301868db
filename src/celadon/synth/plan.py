"""`celadon synth plan`: what to generate, derived from the data (paper §3.2.2, Datasets A and B).

A plan is one row per image to generate: item id, the four labels, prompt, negative prompt, seed, and why
(`purpose`: rare or confusion, a `reason` in words, and for a confusion item the other class of its pair,
`pair_with`, from which img2img starts; the source photos themselves are chosen at generation, see sources.py).
Only label combinations that exist among the real training images are generated (no invented, historically
implausible pairings). Two sources share the budget: rare combinations (fewest training originals, each
weighted 1/sqrt(n) so the rarest get most) and confusion pairs (combinations holding either class of a
reference classifier's most confused pairs). Preset A is the paper's minimal set (synthetic : real = 5 : 95), B the
comprehensive one (10 : 90).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from celadon.data.manifest import Manifest
from celadon.errors import CeladonError
from celadon.runinfo import atomic_write_text, write_run_info
from celadon.synth.captions import caption
from celadon.synth.pipeline import DEFAULT_NEGATIVE
from celadon.synth.select import pairs_from_metrics, with_roles

PRESETS = {"A": 5 / 95, "B": 10 / 90}  # synthetic images per real training image


@dataclass
class PlanConfig:
    manifest: str = ""  # splits.csv: its training originals are counted
    out: str = ""  # where plan.csv goes
    taxonomy: str | None = None
    preset: str = "B"  # A: 5:95 synthetic:real, B: 10:90
    total: int = 0  # images; 0: the preset's share of the training set
    rare_max: int = 10  # combinations with at most this many training originals are rare
    confusion_share: float = 0.3  # of the budget, when confusion pairs are known
    confusion_pairs: int = 3  # most confused pairs taken from the reference's metrics
    confusion_task: str | None = None  # None: the taxonomy's confusion role
    pairs: tuple[tuple[str, str], ...] = ()  # explicit pairs; override the metrics
    metrics: str | None = None  # the reference's metrics.json on validation (celadon evaluate --split val)
    allow_test_metrics: bool = False  # accept a test-split metrics.json (test labels then steer the plan)
    max_per_combination: int = 0  # 0: no cap
    negative_prompt: str = DEFAULT_NEGATIVE  # the paper's; "" for a model that never saw such words
    seed: int = 0  # every item's own generation seed derives from it


def _largest_remainder(weights: np.ndarray, total: int, cap: int) -> np.ndarray:
    """Integer counts proportional to `weights` summing to `total` (each at most `cap` when cap > 0)."""
    counts = np.zeros(len(weights), dtype=int)
    active = weights > 0
    while total > 0 and active.any():
        share = np.where(active, weights, 0) / weights[active].sum() * total
        add = np.floor(share).astype(int)
        order = np.argsort(-(share - add), kind="stable")
        add[order[: total - add.sum()]] += 1
        if cap:
            add = np.minimum(add, cap - counts)
        counts += add
        total -= int(add.sum())
        if cap:
            active &= counts < cap
        if not add.any():
            break
    return counts


def _item_seed(seed: int, item: str) -> int:
    return int.from_bytes(hashlib.sha256(f"plan:{seed}:{item}".encode()).digest()[:4], "little")


def plan_total(config: PlanConfig, originals: int) -> int:
    """Images a plan asks for: its `total`, else its preset's share of the `originals` training images."""
    if config.total:
        return config.total
    if config.preset not in PRESETS:
        raise CeladonError(f"preset {config.preset!r} is unknown; use one of {', '.join(PRESETS)} or --total")
    return max(1, round(originals * PRESETS[config.preset]))


def make_plan(manifest: Manifest, config: PlanConfig) -> pd.DataFrame:
    config = with_roles(config, manifest.taxonomy)
    tasks = list(manifest.tasks)
    frame = manifest.frame
    originals = frame[manifest.augmentation_seeds() < 0]
    if "split" in originals:
        originals = originals[originals["split"] == "train"]
    complete = originals.dropna(subset=tasks)
    if complete.empty:
        raise CeladonError(f"{manifest.source}: no training images with all of {', '.join(tasks)} labelled")
    counts = complete.groupby(tasks).size().rename("train_images").reset_index()
    total = plan_total(config, len(originals))
    pairs = config.pairs or (pairs_from_metrics(config.metrics, config.confusion_task, config.confusion_pairs,
                                                config.allow_test_metrics)
                             if config.metrics else ())
    in_pair = counts[config.confusion_task].isin({c for pair in pairs for c in pair}) if pairs else None
    n_confusion = round(total * config.confusion_share) if in_pair is not None and in_pair.any() else 0
    weights = 1 / np.sqrt(counts["train_images"].to_numpy(dtype=float))
    rare = (counts["train_images"] <= config.rare_max).to_numpy()
    if not rare.any():  # nothing is rare by the threshold: the rarest quarter is
        rare = counts["train_images"].rank(method="first").to_numpy() <= max(1, len(counts) // 4)
    cap = config.max_per_combination
    counts["rare"] = _largest_remainder(np.where(rare, weights, 0), total - n_confusion, cap)
    counts["confusion"] = _largest_remainder(np.where(in_pair, weights, 0), n_confusion, cap) if n_confusion else 0
    pair_names = {c: f"{a} vs {b}" for a, b in pairs for c in (a, b)}
    partner = {c: d for a, b in pairs for c, d in ((a, b), (b, a))}
    rows = []
    for combo in counts.itertuples(index=False):
        labels = {t: getattr(combo, t) for t in tasks}
        prompt = caption(labels, manifest.taxonomy)
        key = "+".join(str(labels[t]) for t in tasks)
        for purpose in ("rare", "confusion"):
            for k in range(getattr(combo, purpose)):
                item = f"{key}#{purpose}#{k}"
                reason = (f"rare: {combo.train_images} training image(s)" if purpose == "rare"
                          else f"confusion pair {pair_names[labels[config.confusion_task]]}")
                rows.append({"item_id": "", "key": item, **labels, "purpose": purpose, "reason": reason,
                             "pair_with": partner[labels[config.confusion_task]] if purpose == "confusion" else "",
                             "train_images": combo.train_images, "prompt": prompt,
                             "negative_prompt": config.negative_prompt, "seed": _item_seed(config.seed, item)})
    plan = pd.DataFrame(rows)
    plan["item_id"] = [f"i{n:05d}" for n in range(len(plan))]
    return plan.drop(columns="key")


def run_plan(manifest: Manifest, out_dir: str | Path, config: PlanConfig) -> tuple[Path, pd.DataFrame]:
    """Write `plan.csv` (one row per image to generate); returns it and a per-source summary."""
    config = with_roles(config, manifest.taxonomy)
    plan = make_plan(manifest, config)
    out_dir = Path(out_dir)
    path = out_dir / "plan.csv"
    atomic_write_text(path, plan.to_csv(index=False, lineterminator="\n"))
    write_run_info(out_dir, "synth plan", asdict(config), config.seed)
    summary = plan.groupby("purpose").agg(images=("item_id", "size"),
                                         combinations=("prompt", "nunique")).reset_index()
    return path, summary

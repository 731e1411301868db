"""`celadon train`: multi-task training with weighted CE, task weights, real/synthetic mixing, early stopping.

Reproducible and resumable by construction: every epoch reseeds torch and the sampler from (seed, epoch),
so resuming from the checkpoint of epoch k replays epochs k+1.. exactly as an uninterrupted run would.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from celadon.checkpoint import load_checkpoint, save_checkpoint, save_tensors
from celadon.classify.data import (
    MISSING,
    CachedDataset,
    ImageCache,
    Samples,
    cache_resolution,
    concat_samples,
    eval_transform,
    jitter_colours,
    normalise,
    prepare_samples,
    train_transform,
)
from celadon.classify.device_batches import DeviceBatches, augments_on_device
from celadon.classify.loss import multitask_loss
from celadon.classify.metrics import mean_macro_f1, task_metrics
from celadon.classify.mixing import MIXING, epoch_draws, epoch_size, synthetic_share
from celadon.classify.models import ModelConfig, MultiTaskNet
from celadon.classify.predict import predict_logits
from celadon.classify.synthetic import check_synthetic_options, row_options, separate_batchnorm, synthetic_rows
from celadon.cpu import set_threads
from celadon.data.check import check_split_manifest
from celadon.data.manifest import Manifest, passed_qc, read_manifest
from celadon.data.sampling import combination_sample_weights, effective_number_weights
from celadon.device import autocast, on_gpu, resolve_device
from celadon.errors import CeladonError
from celadon.runinfo import atomic_write_text, default_cache_dir, write_run_info
from celadon.taxonomy import Taxonomy, load_taxonomy

PAPER_TASK_WEIGHTS = {"dynasty": 1.0, "kiln": 1.2, "glaze": 2.0, "type": 1.5}
BUDGET = ("optimizer_steps", "real_presentations", "synthetic_presentations")  # summed over epochs


@dataclass
class TrainConfig:
    splits: str = ""  # manifest with a split column (splits.csv, or augmented.csv)
    out: str = "runs/train"  # model, checkpoints, history and run.yaml
    taxonomy: str | None = None
    tasks: list[str] | None = None  # default: every task of the taxonomy
    backbone: str = "efficientnet_lite0"  # a name in celadon.classify.models' registry
    weights: str = "auto"  # auto (offline ImageNet weights where shipped), none, or a weights file
    projection: bool = True  # a shared projection layer before the task heads
    dropout: float = 0.5  # before each task head
    # False freezes the backbone's depthwise kernels (4% of EfficientNet-Lite0's weights, whose weight gradient
    # is about half of a CPU training step); everything else still trains
    train_depthwise: bool = True
    # The backbone's first N stages (stem = 1) frozen: no backward through them at all; 0 trains every stage
    freeze_stages: int = 0
    image_size: int = 224  # pixels per side the network sees
    # every image, real or synthetic, first brought to this square size by the same resize (a study sets the
    # generators' resolution, so no arm can tell synthetic images by their sharpness); 0: straight to the cache
    source_size: int = 0
    batch_size: int = 64  # images per optimizer step
    epochs: int = 50  # at most; early stopping may end sooner (patience)
    patience: int = 10  # epochs without a better val mean macro-F1 before stopping
    lr_backbone: float = 1e-4  # AdamW learning rate of the backbone
    lr_heads: float = 1e-3  # AdamW learning rate of the projection and heads
    weight_decay: float = 1e-5  # AdamW
    grad_clip: float = 1.0  # gradient norm clipping; 0 turns it off
    task_weights: dict[str, float] = field(default_factory=lambda: dict(PAPER_TASK_WEIGHTS))  # loss weight per task
    class_weight_beta: float = 0.999  # effective-number class weights (Cui et al.)
    class_weight_cap: float = 10.0  # the rarest class weighs at most this times the commonest
    # "auto" (inverse class frequency of the taxonomy's confusion task: the paper's glaze sampler; hierarchical
    # when that task is not trained), a task name, "hierarchical" (1/sqrt(n) per label combination) or "none"
    sampler: str = "auto"
    synthetic: str | None = None  # a manifest of synthetic images (`celadon synth curate`'s accepted.csv)
    synthetic_ratio: float = 0.0  # share of training draws that are synthetic (paper: 0.05 and 0.10)
    # "on_top": synthetic draws come on top of a full epoch of real ones, and every arm of a study trains the same
    # steps: the epoch is N / (1 - budget_ratio) draws for all, the baseline's all real, a mixed arm's real draws
    # never fewer than N (so no task loses real labels to a synthetic image that does not train it);
    # "replace": synthetic draws take the place of that share of real draws (equal steps, fewer real draws);
    # "add": the paper's protocol, the epoch grows by 1 / (1 - ratio), so mixed arms train longer.
    mixing: str = "on_top"
    # on_top: the study's largest synthetic ratio, which sizes every arm's epoch (0: this run's own ratio)
    budget_ratio: float = 0.0
    synthetic_tasks: list[str] | None = None  # tasks synthetic images train; None = all
    # How synthetic rows enter a step (celadon.classify.synthetic); none changes which rows are drawn.
    # Label smoothing on synthetic rows only (0.2: the intended class gets about 0.8)
    synthetic_smoothing: float = 0.0
    synthetic_weight: float = 1.0  # a synthetic row's loss weight (1 = as a photo's)
    # "separate": synthetic rows normalised by their own batch statistics; running statistics from photos only
    synthetic_batchnorm: str = "shared"
    synthetic_confidence: bool = False  # each synthetic label weighs QC's judge's probability of it (judge_p_*)
    seed: int = 0
    device: str = "auto"  # auto (the GPU when there is one), cpu, cuda or cuda:N
    # where training images are augmented: auto (on a GPU: whole batches on the device; on the CPU: per image in
    # the loader), loader, or device (the GPU path, also on the CPU)
    augment_on: str = "auto"
    threads: int = 0  # torch threads (0: every usable core, a count fixed by the machine; celadon.cpu)
    workers: int = 0  # DataLoader workers; 0 keeps decoding-free loading in the training process
    cache_dir: str | None = None  # default $CELADON_CACHE or ~/.cache/celadon
    max_steps_per_epoch: int = 0  # 0 = one pass over the training draws
    allow_leakage: bool = False  # train although copies of one image sit in two splits (stated, not silent)
    log_tensorboard: bool = True  # TensorBoard event files beside history.csv

    def key_settings(self) -> dict:
        """What decides the trained model, for a study's stage key: settings added since studies began count only
        where they differ from their defaults (so the keys of earlier studies hold)."""
        values = asdict(self)
        for name, default in (("train_depthwise", True), ("augment_on", "auto"), ("freeze_stages", 0),
                              ("budget_ratio", 0.0), ("source_size", 0), ("synthetic_smoothing", 0.0),
                              ("synthetic_weight", 1.0), ("synthetic_batchnorm", "shared"),
                              ("synthetic_confidence", False)):
            if values[name] == default:
                values.pop(name)
        return values


def load_synthetic(path: str, taxonomy: Taxonomy) -> Manifest:
    """A manifest of synthetic images, as `celadon synth curate` writes it (`accepted.csv`). Rows of a table
    with a `qc_pass` or `review` column (a qc.csv given directly) are kept only when they passed and were not
    rejected; decisions made in `celadon review serve` reach training through curate, not from here."""
    manifest = read_manifest(path, taxonomy)
    frame = manifest.frame
    keep = passed_qc(frame)
    if "review" in frame:
        keep &= (frame["review"].astype(str).str.lower() != "rejected").to_numpy()
    if not keep.any():
        raise CeladonError(f"{path}: no synthetic image passed QC and review; nothing to mix in")
    return manifest.subset(keep)


def sample_weights(manifest: Manifest, samples: Samples, tasks: list[str], scheme: str) -> np.ndarray:
    """Per-sample draw weights for the real training rows."""
    if scheme == "auto":
        confusion = manifest.taxonomy.confusion
        scheme = confusion if confusion in tasks else "hierarchical"
    if scheme == "none":
        return np.ones(len(samples.rows))
    if scheme == "hierarchical":
        return combination_sample_weights(manifest.combination_keys())
    if scheme not in tasks:
        raise CeladonError(f"sampler {scheme!r} is neither 'none', 'hierarchical' nor a task ({', '.join(tasks)})")
    labels = samples.targets[:, tasks.index(scheme)]
    values, counts = np.unique(labels, return_counts=True)
    frequency = dict(zip(values.tolist(), counts.tolist(), strict=True))
    return np.array([1.0 / frequency[v] for v in labels.tolist()])


def model_card(model: MultiTaskNet, taxonomy: Taxonomy, config: TrainConfig) -> dict:
    """What `model.json` holds: enough to rebuild the model and decode its outputs without the run."""
    return {"model": asdict(model.config) | {"weights": "none"}, "pretrained": model.pretrained,
            "image_size": config.image_size, "source_size": config.source_size, "mean": list(model.mean),
            "std": list(model.std),
            "classes": {t: taxonomy.task(t).codes for t in model.task_names},
            "taxonomy": taxonomy.source if taxonomy.source.startswith("celadon:")
            else str(Path(taxonomy.source).resolve())}


class Trainer:
    """Holds one run's data, model and optimiser; `fit()` trains (or resumes) to the end."""

    def __init__(self, config: TrainConfig, progress: bool = True):
        self.config, self.progress = config, progress
        set_threads(config.threads)
        self.device = resolve_device(config.device)
        self.on_device = augments_on_device(config.augment_on, self.device)
        self.out = Path(config.out)
        self.taxonomy = load_taxonomy(config.taxonomy)
        self.tasks = config.tasks or self.taxonomy.task_names
        for task in self.tasks:
            self.taxonomy.task(task)
        if config.mixing not in MIXING:
            raise CeladonError(f"mixing: {config.mixing!r} is not one of on_top (synthetic on top, equal steps), "
                               "replace (synthetic in place of real draws, equal steps) or add (the paper's longer "
                               "epochs)")
        if not 0 <= config.budget_ratio < 1:
            raise CeladonError(f"budget_ratio: {config.budget_ratio} must be in [0, 1)")
        check_synthetic_options(config.synthetic_smoothing, config.synthetic_weight, config.synthetic_batchnorm,
                                config.synthetic_confidence)
        unknown = [t for t in config.synthetic_tasks or [] if t not in self.tasks]
        if unknown:
            raise CeladonError(f"synthetic_tasks: {', '.join(unknown)} not among the trained tasks "
                               f"({', '.join(self.tasks)}); synthetic images would train nothing for it")
        manifest = read_manifest(config.splits, self.taxonomy)
        if "split" not in manifest.frame:
            raise CeladonError(f"{config.splits}: no 'split' column; run `celadon data split` first")
        leaks = check_split_manifest(manifest, config.allow_leakage, progress=progress)
        if leaks:
            print(f"warning: training with {leaks} pairs of copies across splits (--allow-leakage)", file=sys.stderr)
        self.train_manifest = manifest.subset(manifest.frame["split"] == "train")
        self.val_manifest = manifest.subset(manifest.frame["split"] == "val")
        if len(self.train_manifest) == 0 or len(self.val_manifest) == 0:
            raise CeladonError(f"{config.splits}: needs train and val rows (has {len(self.train_manifest)} train, "
                               f"{len(self.val_manifest)} val)")
        cache = ImageCache(default_cache_dir(config.cache_dir), cache_resolution(config.image_size),
                           config.source_size)
        real = prepare_samples(self.train_manifest, self.tasks, cache, progress=progress)
        parts, n_synthetic = [real], 0
        if config.synthetic and config.synthetic_ratio > 0:
            masked = tuple(t for t in self.tasks if config.synthetic_tasks is not None
                           and t not in config.synthetic_tasks)
            synthetic = prepare_samples(load_synthetic(config.synthetic, self.taxonomy), self.tasks, cache,
                                        synthetic=True, masked_tasks=masked, progress=progress,
                                        confidence=config.synthetic_confidence)
            parts.append(synthetic)
            n_synthetic = len(synthetic.rows)
        self.samples = concat_samples(parts)
        self.n_real, self.n_synthetic = len(real.rows), n_synthetic
        self.real_weights = sample_weights(self.train_manifest, real, self.tasks, config.sampler)
        self.epoch_size = epoch_size(config.mixing, len(real.rows), config.synthetic_ratio, config.budget_ratio,
                                     bool(n_synthetic))
        self.share = synthetic_share(config.mixing, config.synthetic_ratio, config.budget_ratio)
        val_samples = prepare_samples(self.val_manifest, self.tasks, cache, progress=progress)
        pixels = cache.array()  # after every image is cached: the memmap's shape is fixed when opened
        self.train_set = CachedDataset(pixels, self.samples, train_transform(config.image_size))
        self.val_set = CachedDataset(pixels, val_samples, eval_transform(config.image_size))
        self.class_weights = {}  # from the real training counts: the same in every arm of a study
        for j, task in enumerate(self.tasks):
            labels = real.targets[:, j]
            counts = np.bincount(labels[labels != MISSING], minlength=len(self.taxonomy.task(task).codes))
            self.class_weights[task] = torch.tensor(
                effective_number_weights(counts, config.class_weight_beta, config.class_weight_cap),
                dtype=torch.float32, device=self.device)
        n_classes = {t: len(self.taxonomy.task(t).codes) for t in self.tasks}
        torch.manual_seed(config.seed)
        self.model = MultiTaskNet(ModelConfig(config.backbone, config.weights, n_classes, config.projection,
                                              config.dropout)).to(self.device, memory_format=torch.channels_last)
        if not config.train_depthwise:
            self.model.freeze_depthwise()
        self.model.freeze_stages(config.freeze_stages)
        self.domain_layers = separate_batchnorm(self.model) if config.synthetic_batchnorm == "separate" else []
        head_ids = {id(p) for p in self.model.head_parameters()}
        self.optimizer = torch.optim.AdamW(
            [{"params": [p for p in self.model.parameters() if id(p) not in head_ids], "lr": config.lr_backbone},
             {"params": self.model.head_parameters(), "lr": config.lr_heads}],
            weight_decay=config.weight_decay)
        self.steps_per_epoch = self._steps_per_epoch()
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=max(1, config.epochs * self.steps_per_epoch))

    def _steps_per_epoch(self) -> int:
        steps = -(-self.epoch_size // self.config.batch_size)
        return min(steps, self.config.max_steps_per_epoch) if self.config.max_steps_per_epoch else steps

    def _epoch_seed(self, epoch: int) -> int:
        return self.config.seed * 1_000_003 + epoch

    def train_epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
        torch.manual_seed(self._epoch_seed(epoch))
        draws = epoch_draws(self.real_weights, self.n_synthetic, self.share,
                            self.steps_per_epoch * self.config.batch_size, self._epoch_seed(epoch))
        if self.on_device:
            loader = DeviceBatches(self.train_set.pixels, self.samples, draws, self.config.batch_size,
                                   self.config.image_size, self.device, self._epoch_seed(epoch))
        else:
            loader = DataLoader(self.train_set, batch_size=self.config.batch_size, sampler=draws,
                                num_workers=self.config.workers, pin_memory=on_gpu(self.device))
        totals: dict[str, torch.Tensor] = {}
        batches = 0
        bar = tqdm(loader, total=self.steps_per_epoch, desc=f"epoch {epoch}", disable=not self.progress, leave=False)
        size = self.config.batch_size
        for images, targets in bar:
            images = images.to(self.device, non_blocking=True)
            targets = targets.to(self.device, non_blocking=True)
            index = np.asarray(draws[batches * size:(batches + 1) * size], dtype=np.int64)  # loaders keep order
            synthetic = torch.from_numpy(index >= self.n_real)
            with autocast(self.device), synthetic_rows(self.domain_layers, synthetic, self.device):
                logits = self.model(normalise(jitter_colours(images), self.model.mean, self.model.std))
            options = row_options(self.config, self.samples.label_weights[index], synthetic, self.device)
            loss, parts = multitask_loss(logits, targets, self.tasks, self.class_weights, self.config.task_weights,
                                         **options)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            batches += 1
            for key, value in {"loss": loss.detach(), **{f"loss_{t}": v for t, v in parts.items()}}.items():
                totals[key] = totals.get(key, 0) + value  # summed on the device: no wait per step
            if batches % 10 == 1:
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        synthetic = sum(1 for i in draws if i >= self.n_real)
        means = {k: float(v) / max(batches, 1) for k, v in totals.items()}
        drawn = self.samples.targets[np.asarray(draws[:batches * self.config.batch_size], dtype=np.int64)]
        labelled = {f"labels_{t}": int((drawn[:, j] != MISSING).sum()) for j, t in enumerate(self.tasks)}
        return {"loss": means.pop("loss", 0.0), **means, "optimizer_steps": batches,
                "real_presentations": len(draws) - synthetic, "synthetic_presentations": synthetic, **labelled}

    def validate(self) -> dict[str, float]:
        logits = predict_logits(self.model, self.val_set, self.config.batch_size, self.device)
        result = {}
        for j, task in enumerate(self.tasks):
            metrics = task_metrics(self.val_set.samples.targets[:, j], logits[task], self.taxonomy.task(task).codes)
            result[f"val_f1_macro_{task}"] = metrics["f1_macro"]
            result[f"val_top1_{task}"] = metrics["top1"]
        result["val_mean_f1_macro"] = mean_macro_f1({t: {"f1_macro": result[f"val_f1_macro_{t}"]}
                                                     for t in self.tasks})
        return result

    def fit(self, resume: bool = False) -> dict:
        """Train until `epochs` or early stopping; returns the final training state."""
        self.out.mkdir(parents=True, exist_ok=True)
        ckpt = self.out / "checkpoints"
        state = {"history": [], "best": -1.0, "best_epoch": 0, "stale": 0}
        start = 1
        loaded = load_checkpoint(ckpt) if resume else None
        if resume and loaded is None:
            print(f"no checkpoint in {ckpt}; starting from scratch")
        if loaded is not None:
            epoch, weights, saved = loaded
            self.model.load_state_dict(weights)
            self.optimizer.load_state_dict(saved["optimizer"])
            self.scheduler.load_state_dict(saved["scheduler"])
            state = saved["progress"]
            start = epoch + 1
        elif (ckpt / "latest.json").exists():
            raise CeladonError(f"{self.out} already holds a training run; pass --resume to continue it, "
                               "or choose another --out")
        write_run_info(self.out, "train", self.config, self.config.seed, self.device)
        writer = self._tensorboard(start)
        path = "augmented on the device" if self.on_device else "augmented per image in the loader"
        print(f"backbone {self.config.backbone}: {self.model.pretrained}; on {self.device}, images {path}")
        for epoch in range(start, self.config.epochs + 1):
            if state["stale"] >= self.config.patience:
                break
            began = time.perf_counter()
            row = {"epoch": epoch, **self.train_epoch(epoch), **self.validate(),
                   "lr_backbone": self.optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - began}
            state["history"].append(row)
            if row["val_mean_f1_macro"] > state["best"]:
                state.update(best=row["val_mean_f1_macro"], best_epoch=epoch, stale=0)
                self._save_best()
            else:
                state["stale"] += 1
            save_checkpoint(ckpt, epoch, self.model, {"optimizer": self.optimizer.state_dict(),
                                                      "scheduler": self.scheduler.state_dict(), "progress": state})
            self._write_history(state["history"])
            if writer is not None:
                for key, value in row.items():
                    if key != "epoch":
                        writer.add_scalar(key.replace("_", "/", 1), value, epoch)
                writer.flush()
            print(f"epoch {epoch}: loss {row['loss']:.3f}, val mean macro-F1 {row['val_mean_f1_macro']:.3f} "
                  f"(best {state['best']:.3f} @ {state['best_epoch']}), {row['seconds']:.0f} s", flush=True)
        if state["stale"] >= self.config.patience:
            print(f"early stop: no improvement for {self.config.patience} epochs; best epoch {state['best_epoch']}")
        if writer is not None:
            writer.close()
        counted = [*BUDGET, *(f"labels_{t}" for t in self.tasks)]  # labelled presentations per task, too
        state["budget"] = {"mixing": self.config.mixing, **{key: int(sum(row.get(key, 0) for row in state["history"]))
                                                             for key in counted}}
        return state

    def _save_best(self) -> None:
        save_tensors(self.out / "model.safetensors", self.model.state_dict())
        atomic_write_text(self.out / "model.json", json.dumps(model_card(self.model, self.taxonomy, self.config),
                                                              indent=2, ensure_ascii=False))

    def _write_history(self, history: list[dict]) -> None:
        columns = list(dict.fromkeys(k for row in history for k in row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, columns)
        writer.writeheader()
        writer.writerows(history)
        atomic_write_text(self.out / "history.csv", buffer.getvalue())

    def _tensorboard(self, start: int):
        if not self.config.log_tensorboard:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return None
        # purge_step drops events a killed run logged after its last checkpoint, so curves never repeat.
        return SummaryWriter(str(self.out / "tensorboard"), purge_step=start)


def train(config: TrainConfig, resume: bool = False, progress: bool = True) -> dict:
    return Trainer(config, progress).fit(resume)

"""How a training step treats the synthetic images in its batch: options for closing the gap to the oracle.

A generator's images are not photos: their labels may be wrong (the judge masks what it reads otherwise, not
what it doubts), and their pixel statistics differ. Each option here changes only how synthetic rows enter
the loss or the network, never which rows are drawn, so every arm keeps the study's equal budgets:

- `synthetic_smoothing` (label smoothing on synthetic rows only, torch's definition: the intended class gets
  1 - e + e/C). Diff-Mix trains its synthetic images on soft labels of about 0.8.
- `synthetic_weight`: each synthetic row's loss counts this much (1 = as a photo); the task's loss is still
  divided by its labelled rows, so 0.5 halves what the synthetic rows add instead of re-weighting the photos.
- `synthetic_confidence`: each synthetic label's loss is scaled by the probability QC's judge gave it
  (`judge_p_<task>` in qc.csv and accepted.csv; 1 for a task the judge did not read), so a label the judge
  doubts counts less though it passed.
- `synthetic_batchnorm: separate`: in training, the synthetic rows of a batch are normalised by their own
  statistics (the affine weights shared), and only the real rows move BatchNorm's running statistics, the
  ones evaluation uses ("domain-specific BatchNorm"; "Diversify, Don't Fine-tune" separates synthetic data's
  statistics too). Evaluation is unchanged: every test image is a photo. Where a batch's synthetic rows
  hold one value per channel (one row at the last 1x1 stage of a tiny image), that layer normalises the batch
  as one and moves no running statistic.

Which rows are synthetic the trainer knows from the epoch's draws (index >= the real rows), so the batches
themselves carry nothing new.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from celadon.errors import CeladonError

SYNTHETIC_BATCHNORM = ("shared", "separate")


def check_synthetic_options(smoothing: float, weight: float, batchnorm: str, confidence: bool = False) -> None:
    """One-line errors for values no option can mean."""
    if not 0 <= smoothing < 1:
        raise CeladonError(f"synthetic_smoothing: {smoothing} must be in [0, 1) (0 = hard labels, 0.2 = the "
                           "intended class gets about 0.8)")
    if weight < 0:
        raise CeladonError(f"synthetic_weight: {weight} must be >= 0 (1 = a synthetic row counts as a photo)")
    if not isinstance(confidence, bool):
        raise CeladonError(f"synthetic_confidence: true or false, got {confidence!r}")
    if batchnorm not in SYNTHETIC_BATCHNORM:
        raise CeladonError(f"synthetic_batchnorm: {batchnorm!r} is not one of {', '.join(SYNTHETIC_BATCHNORM)}")


class DomainBatchNorm(nn.Module):
    """Mixed into a BatchNorm2d class (torch's, or timm's BatchNormAct2d): while `synthetic` holds a row mask in
    training, those rows are normalised by their own batch statistics, without touching the running ones, and
    the other rows as usual (the only ones that update the running statistics). Parameters and buffers stay
    the BatchNorm's, so state dicts load into the plain network."""

    synthetic: torch.Tensor | None = None
    synthetic_count = 0  # how many rows the mask holds, counted once per batch on the CPU (no GPU sync per layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask, count = self.synthetic, self.synthetic_count
        if mask is None or not self.training or count in (0, len(x)):
            return super().forward(x)
        if count * x.shape[2] * x.shape[3] < 2:  # one value per channel has no statistics: the whole
            return self._batch_statistics_only(x)  # batch as one, moving no running statistic
        real = super().forward(x[~mask])
        fake = self._batch_statistics_only(x[mask])
        out = real.new_empty((len(x), *real.shape[1:]))
        out[~mask], out[mask] = real, fake
        return out

    def _batch_statistics_only(self, x: torch.Tensor) -> torch.Tensor:
        tracked = self.track_running_stats
        self.track_running_stats = False  # batch statistics, and no running-statistics update
        try:
            return super().forward(x)
        finally:
            self.track_running_stats = tracked


_DOMAIN_CLASSES: dict[type, type] = {}


def separate_batchnorm(model: nn.Module) -> list[nn.Module]:
    """Mix DomainBatchNorm into every BatchNorm2d of `model`, in place (the same module objects, so frozen
    stages and optimiser groups still hold them); returns them."""
    layers = []
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d) and not isinstance(module, DomainBatchNorm):
            base = type(module)
            if base not in _DOMAIN_CLASSES:
                _DOMAIN_CLASSES[base] = type(f"Domain{base.__name__}", (DomainBatchNorm, base), {})
            module.__class__ = _DOMAIN_CLASSES[base]
            layers.append(module)
    return layers


def row_options(config, label_weights: np.ndarray, synthetic: torch.Tensor, device: str) -> dict[str, torch.Tensor]:
    """What `multitask_loss` takes for one batch from a TrainConfig's synthetic options: per-row label smoothing
    and (row, task) loss weights, from the batch's (row, task) label weights and synthetic-row mask; nothing
    when the options are off."""
    options = {}
    if config.synthetic_smoothing:
        options["smoothing"] = (synthetic.float() * config.synthetic_smoothing).to(device)
    if config.synthetic_weight != 1.0 or config.synthetic_confidence:
        weights = torch.from_numpy(np.array(label_weights, dtype=np.float32))
        weights[synthetic] *= config.synthetic_weight
        options["row_weights"] = weights.to(device)
    return options


@contextlib.contextmanager
def synthetic_rows(layers: list[nn.Module], mask: torch.Tensor, device: str = "cpu") -> Iterator[None]:
    """Tell DomainBatchNorm layers which rows of the coming batch are synthetic (`mask` on the CPU; nothing to
    do without layers)."""
    if layers:
        count, on_device = int(mask.sum()), mask.to(device)
        for layer in layers:
            layer.synthetic, layer.synthetic_count = on_device, count
    try:
        yield
    finally:
        for layer in layers:
            layer.synthetic, layer.synthetic_count = None, 0

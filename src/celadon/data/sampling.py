"""Rebalancing at training time: 1/sqrt(n) combination sampling and effective-number class weights.

Both are plain weight vectors; sampling goes through torch's `WeightedRandomSampler` rather than a
custom sampler, so any DataLoader can use it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import WeightedRandomSampler

from celadon.data.manifest import Manifest


def combination_sample_weights(keys: Sequence[str], power: float = 0.5) -> np.ndarray:
    """Per-sample weight n_c^-power for a sample of combination c (paper: power 0.5, i.e. 1/sqrt(n)).

    A combination's total sampling mass becomes n_c^(1-power): rare combinations are oversampled
    relative to their frequency without being flattened to uniform (power 1 would do that).
    """
    keys = pd.Series(list(keys))
    sizes = keys.map(keys.value_counts()).to_numpy(dtype=np.float64)
    return sizes ** -power


def effective_number_weights(counts: Sequence[int], beta: float = 0.999, cap: float = 10.0) -> np.ndarray:
    """Class-balanced weights of Cui et al. (2019), (1 - beta) / (1 - beta^n), as the paper uses them:
    relative to the most frequent class (weight 1), capped at `cap` (paper: beta 0.999, cap 10), then
    scaled to mean 1 over the classes present. The rarest class thus weighs at most `cap` times the most
    frequent one; absent classes get weight 0."""
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    weights = np.zeros_like(counts)
    if not present.any():
        return weights
    raw = (1.0 - beta) / (1.0 - np.power(beta, counts[present]))
    relative = np.minimum(raw / raw.min(), cap)
    weights[present] = relative * present.sum() / relative.sum()
    return weights


def task_class_weights(manifest: Manifest, task: str, beta: float = 0.999, cap: float = 10.0) -> torch.Tensor:
    """Effective-number weights indexed like the taxonomy's classes of `task` (missing labels ignored)."""
    codes = manifest.taxonomy.task(task).codes
    counts = manifest.frame[task].value_counts()
    return torch.tensor(effective_number_weights([int(counts.get(c, 0)) for c in codes], beta, cap),
                        dtype=torch.float32)


def make_sampler(weights: Sequence[float], num_samples: int | None = None, seed: int = 0) -> WeightedRandomSampler:
    """A seeded `WeightedRandomSampler` drawing `num_samples` (default: one epoch) with replacement."""
    generator = torch.Generator().manual_seed(seed)
    weights = torch.as_tensor(np.asarray(weights, dtype=np.float64))
    return WeightedRandomSampler(weights, num_samples or len(weights), replacement=True, generator=generator)

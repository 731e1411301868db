"""How an epoch mixes real and synthetic training draws, per `TrainConfig.mixing`.

Every arm of a study should train the same optimizer steps, and a synthetic image should add labels without
taking real ones away. `on_top` (the default) does both as far as one epoch of shared images allows: every
run's epoch is N / (1 - budget_ratio) draws (N real rows; budget_ratio the study's largest synthetic ratio),
a mixed arm's synthetic draws are what its ratio adds on top of N real draws, N x ratio / (1 - ratio), and
the rest of the epoch is real. So each arm presents at least N real draws, the real-only baseline presents
the whole epoch as real draws, and all train the same steps. A task a synthetic image does not train (QC's
task masks, an arm's `tasks`) still sees fewer labelled presentations than in the baseline, by the
synthetic draws that leave it unlabelled: the trainer counts labelled presentations per task (`labels_<task>`
in history.csv and each stage's budget) so the gap is on record.
`replace` keeps the old design (synthetic draws in place of that share of the real ones, equal steps);
`add` is the paper's (the epoch grows by 1 / (1 - ratio) for mixed runs only, so they train longer).
"""

from __future__ import annotations

import numpy as np
import torch

MIXING = ("on_top", "replace", "add")


def synthetic_share(mixing: str, ratio: float, budget_ratio: float) -> float:
    """The share of an epoch's draws that are synthetic: `ratio` itself, except on_top, where the synthetic
    draws are what `ratio` adds to N real ones, N / (1 - ratio) in all, inside an epoch of N / (1 - budget)."""
    if mixing != "on_top" or ratio <= 0:
        return ratio
    return (1 - max(budget_ratio, ratio)) * ratio / (1 - ratio)


def epoch_size(mixing: str, real_rows: int, ratio: float, budget_ratio: float, mixed: bool) -> int:
    """Draws per epoch: N real rows, grown to N / (1 - ratio) by add (mixed runs only), and to N / (1 - budget)
    by on_top (every run of the study, real-only ones too)."""
    if mixing == "on_top":
        grow = max(budget_ratio, ratio if mixed else 0.0)
    else:
        grow = ratio if mixing == "add" and mixed else 0.0
    return int(round(real_rows / (1 - grow))) if grow else real_rows


def epoch_draws(real_weights: np.ndarray, n_synthetic: int, ratio: float, draws: int, seed: int) -> list[int]:
    """One epoch's sample indices: exactly round(draws * ratio) synthetic ones (uniform over the synthetic
    rows, which follow the real ones) and the rest real, drawn by `real_weights`, shuffled together. Exact
    counts, not an expected share, so each arm's real and synthetic presentations are known."""
    generator = torch.Generator().manual_seed(seed)
    n_fake = int(round(draws * ratio)) if n_synthetic and ratio > 0 else 0
    real = torch.multinomial(torch.as_tensor(real_weights, dtype=torch.float64), draws - n_fake, replacement=True,
                             generator=generator)
    if n_fake == 0:
        return real.tolist()
    fake = len(real_weights) + torch.randint(n_synthetic, (n_fake,), generator=generator)
    order = torch.randperm(draws, generator=generator)
    return torch.cat([real, fake])[order].tolist()

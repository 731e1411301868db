"""The multi-task loss (paper eq. 1-2), with what a study's synthetic-image options change per row."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from celadon.classify.data import MISSING


def row_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, class_weights: torch.Tensor | None,
                      smoothing: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Per-row weighted cross-entropy with a label-smoothing amount per row (0 where a row has hard labels):
    (1 - e) w_y (-log p_y) + e/C sum_c w_c (-log p_c), torch's `label_smoothing` definition, and 0 where the
    target is `ignore_index`."""
    log_p = F.log_softmax(logits.float(), dim=1)
    labelled = targets != ignore_index
    safe = torch.where(labelled, targets, torch.zeros_like(targets))
    weights = class_weights if class_weights is not None else log_p.new_ones(log_p.shape[1])
    hard = -log_p.gather(1, safe.unsqueeze(1)).squeeze(1) * weights[safe]
    uniform = -(log_p * weights).mean(dim=1)
    smoothing = smoothing.to(log_p.dtype)
    return torch.where(labelled, (1 - smoothing) * hard + smoothing * uniform, torch.zeros_like(hard))


def multitask_loss(logits: dict[str, torch.Tensor], targets: torch.Tensor, tasks: list[str],
                   class_weights: dict[str, torch.Tensor], task_weights: dict[str, float],
                   smoothing: torch.Tensor | None = None, row_weights: torch.Tensor | None = None,
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Sum over tasks of lambda_t * L_t, L_t = mean over labelled samples of w_y * CE (paper eq. 1-2);
    samples whose label is missing (or masked) do not count for that task. `smoothing` (per row) and
    `row_weights` (per row, or per row and task; synthetic rows' options, celadon.classify.synthetic) smooth a
    row's labels and scale its loss; the task's mean still divides by its labelled rows. The parts are
    detached tensors, so a GPU step does not wait for them."""
    total = logits[tasks[0]].new_zeros((), dtype=torch.float32)
    parts = {}
    for j, task in enumerate(tasks):
        y = targets[:, j]
        labelled = (y != MISSING).sum()
        if y.device.type == "cpu" and int(labelled) == 0:
            continue
        if smoothing is None:
            ce = F.cross_entropy(logits[task].float(), y, weight=class_weights[task], ignore_index=MISSING,
                                 reduction="none")
        else:
            ce = row_cross_entropy(logits[task], y, class_weights[task], smoothing, MISSING)
        if row_weights is not None:
            ce = ce * (row_weights[:, j] if row_weights.dim() == 2 else row_weights)
        loss = ce.sum() / labelled.clamp(min=1)
        parts[task] = loss.detach()
        total = total + task_weights.get(task, 1.0) * loss
    return total, parts

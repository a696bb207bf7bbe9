"""Learning-rate schedule over a whole run (all epochs or all federated rounds)."""

from __future__ import annotations

import torch


def poly_lr(base_lr: float, step: int, total_steps: int, power: float) -> float:
    """nnU-Net's polynomial decay: base_lr * (1 - step / total_steps) ** power.

    Not torch's `PolynomialLR`: a federated site trains a few steps per round, and the schedule spans the whole
    run (step `plan.start` of `plan.total`, `train.loop`); PolynomialLR's chained form multiplies the group's
    current lr step by step, so continuing it at any step needs its state saved beside the optimizer's, where
    this closed form needs only the step index."""
    return base_lr * (1.0 - min(step, total_steps) / max(total_steps, 1)) ** power


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)

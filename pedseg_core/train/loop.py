"""THE local training loop, used by centralized training and by every federated site alike."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from pedseg_core.config import TrainConfig
from pedseg_core.data.sampling import Batch
from pedseg_core.losses.segmentation import SegmentationLoss
from pedseg_core.model.unet import MultiDomainUNet, domain_slices
from pedseg_core.progress import progress_bar
from pedseg_core.train.schedule import poly_lr

# An extra loss term on the model (e.g. FedProx's proximal term): model -> scalar tensor.
Regularizer = Callable[[torch.nn.Module], torch.Tensor]


@dataclass
class StepPlan:
    """Which steps to run: `steps` steps starting at global step `start` of a run of `total` steps."""

    steps: int
    start: int
    total: int


def autocast(precision: str):
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def batch_loss(model: MultiDomainUNet, batch: Batch, loss_fn: SegmentationLoss, cfg: TrainConfig,
               domain_map: Sequence[int] | None = None) -> torch.Tensor:
    """Mean segmentation loss of a mixed-domain batch: each domain's slices go through that domain's norms
    and head; each part weighs by its share of the batch. `domain_map` maps batch domain ids to model
    domains (identity when None)."""
    total = batch.images.new_zeros(())
    images = batch.images.to(memory_format=torch.channels_last) if cfg.channels_last else batch.images
    for d, idx in domain_slices(batch.domains):
        with autocast(cfg.precision):
            logits = model(images[idx], d if domain_map is None else domain_map[d])
        total = total + loss_fn(logits, batch.labels[idx]) * (len(batch.domains[idx]) / len(batch.domains))
    return total


def train_steps(model: MultiDomainUNet, batches: Iterator[Batch], optimizer: torch.optim.Optimizer,
                cfg: TrainConfig, plan: StepPlan, regularizers: Sequence[Regularizer] = (),
                domain_map: Sequence[int] | None = None, progress: str | None = None) -> dict[str, float]:
    """Run `plan.steps` optimizer steps with the run-wide polynomial learning rate.

    Returns {"loss": mean total loss, "seg_loss": mean segmentation loss, "lr": last lr, "slices": n}.
    """
    loss_fn = SegmentationLoss(cfg)
    model.train()
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    sums = {"loss": 0.0, "seg_loss": 0.0}
    lr, slices = cfg.learning_rate, 0
    steps = range(plan.steps)
    bar = progress_bar(steps, progress, progress is not None, leave=False, unit="step")
    for i in bar:
        batch = next(batches)
        lr = poly_lr(cfg.learning_rate, plan.start + i, plan.total, cfg.poly_power)
        for group in optimizer.param_groups:
            group["lr"] = lr
        seg = batch_loss(model, batch, loss_fn, cfg, domain_map)
        loss = seg + sum((reg(model) for reg in regularizers), seg.new_zeros(()))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sums["loss"] += loss.item()
        sums["seg_loss"] += seg.item()
        slices += len(batch.domains)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    n = max(plan.steps, 1)
    return {"loss": sums["loss"] / n, "seg_loss": sums["seg_loss"] / n, "lr": lr, "slices": slices}

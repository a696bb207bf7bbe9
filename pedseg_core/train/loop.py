"""THE local training loop, used by centralized training and by every federated site alike."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from pedseg_core.config import TrainConfig
from pedseg_core.data.sampling import Batch
from pedseg_core.device import device_of
from pedseg_core.losses.multiscale import MultiScaleContrastive
from pedseg_core.losses.segmentation import SegmentationLoss
from pedseg_core.model.shape_prior import ShapePriorLoss
from pedseg_core.model.unet import MultiDomainUNet, domain_slices
from pedseg_core.precision import Precision, resolve_precision
from pedseg_core.progress import progress_bar
from pedseg_core.train.private_training import PrivateTraining
from pedseg_core.train.schedule import poly_lr

# An extra loss term on the model (e.g. FedProx's proximal term): model -> scalar tensor.
Regularizer = Callable[[torch.nn.Module], torch.Tensor]


@dataclass
class StepPlan:
    """Which steps to run: `steps` steps starting at global step `start` of a run of `total` steps."""

    steps: int
    start: int
    total: int


def autocast(precision: Precision, device: torch.device):
    if precision.dtype == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


_ANNOUNCED: set[Precision] = set()


def training_precision(cfg: TrainConfig, device: torch.device, private: bool) -> Precision:
    """The precision this process trains in (said once on stderr). DP-SGD stays in fp32 unless asked: Opacus'
    per-sample gradients are computed from the layers' activations and backprops."""
    if private and cfg.precision == "auto":
        precision = Precision("fp32", cfg.channels_last, "auto: DP-SGD")
    else:
        precision = resolve_precision(cfg.precision, cfg.channels_last, device)
    if precision not in _ANNOUNCED:
        _ANNOUNCED.add(precision)
        print(f"pedseg: training in {precision.describe()}", file=sys.stderr, flush=True)
    return precision


def batch_loss(model: MultiDomainUNet, batch: Batch, loss_fn: SegmentationLoss, precision: Precision,
               domain_map: Sequence[int] | None = None, contrastive: MultiScaleContrastive | None = None,
               prior: ShapePriorLoss | None = None) -> dict[str, torch.Tensor]:
    """The loss terms of a mixed-domain batch: {"seg_loss"} plus "contrastive_loss" and "prior_loss" when
    asked (unweighted). Each domain's slices go through that domain's norms and head and weigh by their share
    of the batch; the contrastive term sees the embeddings of all domains together. `domain_map` maps batch
    domain ids to model domains (identity when None)."""
    device = device_of(model)
    batch = Batch(*(t.to(device, non_blocking=True) for t in (batch.images, batch.labels, batch.domains)))
    terms = {"seg_loss": batch.images.new_zeros(())} | ({"prior_loss": batch.images.new_zeros(())} if prior else {})
    images = batch.images.to(memory_format=torch.channels_last) if precision.channels_last else batch.images
    scales: list[list[torch.Tensor]] = []
    for d, idx in domain_slices(batch.domains):
        domain = d if domain_map is None else domain_map[d]
        with autocast(precision, device):
            logits, embeddings = model.forward_with_embeddings(images[idx], domain)
        share = len(batch.domains[idx]) / len(batch.domains)
        terms["seg_loss"] = terms["seg_loss"] + loss_fn(logits, batch.labels[idx]) * share
        if prior is not None:
            terms["prior_loss"] = terms["prior_loss"] + prior(logits, batch.labels[idx], domain) * share
        scales = scales or [[] for _ in embeddings]
        for parts, e in zip(scales, embeddings):
            parts.append(e.float())
    if contrastive is not None and scales:
        terms["contrastive_loss"] = contrastive([torch.cat(parts) for parts in scales], _grouped(batch.domains))
    return terms


def _grouped(domains: torch.Tensor) -> torch.Tensor:
    """The batch's domain ids in the order `domain_slices` visits them."""
    return torch.cat([domains[idx] for _, idx in domain_slices(domains)])


def train_steps(model: MultiDomainUNet, batches: Iterator[Batch], optimizer: torch.optim.Optimizer,
                cfg: TrainConfig, plan: StepPlan, regularizers: Sequence[Regularizer] = (),
                domain_map: Sequence[int] | None = None, contrastive: MultiScaleContrastive | None = None,
                prior: ShapePriorLoss | None = None, progress: str | None = None,
                private: PrivateTraining | None = None) -> dict[str, float]:
    """Run `plan.steps` optimizer steps with the run-wide polynomial learning rate. With `private` (DP-SGD),
    `optimizer` is its DPOptimizer, the loss is per sample, and an empty (Poisson) batch takes a noise-only step.

    Returns {"loss": mean total loss, "seg_loss": mean segmentation loss, "contrastive_loss" and
    "prior_loss": mean unweighted terms when used, "lr": last lr, "slices": n}.
    """
    loss_fn = SegmentationLoss(cfg, per_sample=private is not None)
    precision = training_precision(cfg, device_of(model), private is not None)
    model.train()
    if precision.channels_last:
        model.to(memory_format=torch.channels_last)
    weights = {"seg_loss": 1.0, "contrastive_loss": contrastive.weight if contrastive else 0.0,
               "prior_loss": prior.weight if prior else 0.0}
    sums: dict[str, float] = {"loss": 0.0}
    lr, slices = cfg.learning_rate, 0
    steps = range(plan.steps)
    bar = progress_bar(steps, progress, progress is not None, leave=False, unit="step")
    for i in bar:
        batch = next(batches)
        lr = poly_lr(cfg.learning_rate, plan.start + i, plan.total, cfg.poly_power)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if private is not None and not len(batch.domains):
            private.empty_step()
            continue
        terms = batch_loss(model, batch, loss_fn, precision, domain_map, contrastive, prior)
        loss = sum(weights[k] * v for k, v in terms.items())
        loss = loss + sum((reg(model) for reg in regularizers), loss.new_zeros(()))
        for key, value in terms.items():
            sums[key] = sums.get(key, 0.0) + value.item()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sums["loss"] += loss.item()
        slices += len(batch.domains)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    n = max(plan.steps, 1)
    return {k: v / n for k, v in sums.items()} | {"lr": lr, "slices": slices}

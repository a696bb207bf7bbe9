"""Pre-training the shape auto-encoder of the anatomical prior on bone masks in the union label space."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss

from pedseg_core.config import PriorConfig
from pedseg_core.data.sampling import SliceSet
from pedseg_core.data.union_labels import to_union_labels
from pedseg_core.device import device_of
from pedseg_core.model.shape_prior import ShapeAutoEncoder
from pedseg_core.train.private_training import PrivateTraining


def train_shape_autoencoder(autoencoder: ShapeAutoEncoder, masks: Sequence[torch.Tensor], offsets: Sequence[int],
                            cfg: PriorConfig, seed: int, steps: int | None = None) -> dict[str, float]:
    """Reconstruct one-hot union masks (Dice + CE): masks[j] [N_j, H, W] of joint j, sampled equally per joint
    in each batch. Returns {"prior_recon_first", "prior_recon_last"} (mean loss of the first/last 10 steps)."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(autoencoder.parameters(), lr=cfg.learning_rate)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
    per_joint = max(1, cfg.batch_size // len(masks))
    autoencoder.train()
    device = device_of(autoencoder)
    losses = []
    for _ in range(steps if steps is not None else cfg.epochs * cfg.steps_per_epoch):
        batch = torch.cat([to_union_labels(m[torch.randint(len(m), (per_joint,), generator=generator)], o)
                           for m, o in zip(masks, offsets)]).to(device)
        one_hot = F.one_hot(batch, autoencoder.num_classes).permute(0, 3, 1, 2).float()
        loss = loss_fn(autoencoder(one_hot), batch[:, None])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return {"prior_recon_first": sum(losses[:10]) / len(losses[:10]),
            "prior_recon_last": sum(losses[-10:]) / len(losses[-10:])}


def train_shape_autoencoder_privately(private: PrivateTraining, slices: SliceSet, offset: int, steps: int) -> None:
    """DP-SGD on one site's masks: `private` wraps the auto-encoder and its optimizer; each step is a Poisson
    batch of cases (one mask slice [H, W] each, moved to the union label space at `offset`), a per-sample Dice +
    CE loss, clipped and noised. Sends back nothing but the weights: the losses are not covered by DP."""
    autoencoder = private.model
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=False)  # per sample: no coupling in a batch
    device = device_of(autoencoder)
    batches = private.batches(slices)
    autoencoder.train()
    for _ in range(steps):
        batch = next(batches)
        if not len(batch.labels):
            private.empty_step()
            continue
        labels = to_union_labels(batch.labels, offset).to(device)
        one_hot = F.one_hot(labels, autoencoder.num_classes).permute(0, 3, 1, 2).float()
        loss = loss_fn(autoencoder(one_hot), labels[:, None])
        private.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        private.optimizer.step()

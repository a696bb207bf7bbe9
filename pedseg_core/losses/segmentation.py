"""The segmentation loss: MONAI's Dice + cross-entropy."""

from __future__ import annotations

import torch
from monai.losses import DiceCELoss

from pedseg_core.config import TrainConfig


class SegmentationLoss(torch.nn.Module):
    """logits [B, C, H, W], labels [B, H, W] int64 -> scalar Dice+CE (softmax, background included in CE).

    Dice over the whole batch, or (`per_sample`) per slice and averaged, so that each slice's loss depends on it
    alone (DP-SGD clips per-sample gradients)."""

    def __init__(self, cfg: TrainConfig, per_sample: bool = False) -> None:
        super().__init__()
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=cfg.lambda_dice,
                               lambda_ce=cfg.lambda_ce, batch=not per_sample)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.loss(logits.float(), labels[:, None])

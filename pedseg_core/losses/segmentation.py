"""The segmentation loss: MONAI's Dice + cross-entropy."""

from __future__ import annotations

import torch
from monai.losses import DiceCELoss

from pedseg_core.config import TrainConfig


class SegmentationLoss(torch.nn.Module):
    """logits [B, C, H, W], labels [B, H, W] int64 -> scalar Dice+CE (softmax, background included in CE)."""

    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__()
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=cfg.lambda_dice,
                               lambda_ce=cfg.lambda_ce, batch=True)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.loss(logits.float(), labels[:, None])

"""The multi-joint anatomical prior: a convolutional auto-encoder of one-hot bone masks (ACNN-style).

Learned on the masks of all joints in their union label space (background + every joint's bones), then
frozen; the prior loss pulls the code of the predicted soft mask toward the code of the ground truth.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _down(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GroupNorm(min(8, c_out), c_out),
                         nn.LeakyReLU(0.1))


def _up(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1),
                         nn.GroupNorm(min(8, c_out), c_out), nn.LeakyReLU(0.1))


class ShapeAutoEncoder(nn.Module):
    """[B, K, S, S] one-hot or soft masks (K union classes) -> code [B, c, S/2^n, S/2^n] -> [B, K, S, S] logits."""

    def __init__(self, num_classes: int, channels: Sequence[int] = (16, 32, 64, 64)) -> None:
        super().__init__()
        widths = [num_classes, *channels]
        self.encoder = nn.Sequential(*(_down(a, b) for a, b in zip(widths, widths[1:])))
        back = widths[::-1]
        self.decoder = nn.Sequential(*(_up(a, b) for a, b in zip(back[:-2], back[1:-1])),
                                     nn.ConvTranspose2d(back[-2], num_classes, 4, stride=2, padding=1))
        self.num_classes = num_classes

    def encode(self, masks: Tensor) -> Tensor:
        return self.encoder(masks)

    def forward(self, masks: Tensor) -> Tensor:
        return self.decoder(self.encoder(masks))


def to_union(probabilities: Tensor, offset: int, num_union: int) -> Tensor:
    """[B, C, H, W] class probabilities of one joint (background first) -> [B, K, H, W] in the union space,
    the joint's bones placed at union channels offset+1 .. offset+C-1."""
    union = probabilities.new_zeros(probabilities.shape[0], num_union, *probabilities.shape[2:])
    union[:, 0] = probabilities[:, 0]
    union[:, offset + 1: offset + probabilities.shape[1]] = probabilities[:, 1:]
    return union


class ShapePriorLoss:
    """(logits [B, C_d, H, W], labels [B, H, W], model domain d) -> mean squared distance between the frozen
    auto-encoder's codes of the predicted soft mask and of the one-hot ground truth (0 for a perfect
    prediction, growing with the shape error)."""

    def __init__(self, autoencoder: ShapeAutoEncoder, offsets: Sequence[int], weight: float) -> None:
        self.autoencoder = autoencoder.eval().requires_grad_(False)
        self.offsets = list(offsets)
        self.weight = weight

    def __call__(self, logits: Tensor, labels: Tensor, domain: int) -> Tensor:
        k, offset = self.autoencoder.num_classes, self.offsets[domain]
        predicted = to_union(torch.softmax(logits.float(), dim=1), offset, k)
        truth = to_union(F.one_hot(labels.long(), logits.shape[1]).permute(0, 3, 1, 2).float(), offset, k)
        with torch.no_grad():
            target = self.autoencoder.encode(truth)
        return F.mse_loss(self.autoencoder.encode(predicted), target)

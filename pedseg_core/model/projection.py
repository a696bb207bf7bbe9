"""Projection heads for the multi-scale contrastive regularization: pooled feature map -> embedding."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class ProjectionHeads(nn.Module):
    """One head per chosen scale: [B, C_s, H_s, W_s] -> global average pool -> MLP -> [B, dim].

    Shared between domains and sites (like the filters): the regularization shapes the shared representation.
    """

    def __init__(self, channels: Sequence[int], hidden: int, dim: int) -> None:
        super().__init__()
        self.heads = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, hidden), nn.ReLU(),
                          nn.Linear(hidden, dim))
            for c in channels)

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        return [head(f) for head, f in zip(self.heads, features)]

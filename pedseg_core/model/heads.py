"""Domain-specific segmentation heads: each domain (joint) has its own classes."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from pedseg_core.model.domain_norm import DomainModule


class DomainHeads(DomainModule):
    """One 3x3 conv head per domain: [B, C_in, H, W] -> [B, num_classes[domain], H, W]."""

    def __init__(self, in_channels: int, num_classes: Sequence[int]) -> None:
        super().__init__()
        self.heads = nn.ModuleList(nn.Conv2d(in_channels, n, kernel_size=3, padding=1) for n in num_classes)

    @property
    def num_domains(self) -> int:
        return len(self.heads)

    def forward(self, x: Tensor) -> Tensor:
        return self.heads[self.domain](x)

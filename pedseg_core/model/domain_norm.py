"""Domain-specific normalization: one norm layer per domain, the active one picked by a domain index."""

from __future__ import annotations

from torch import Tensor, nn


class DomainModule(nn.Module):
    """Base of every layer that holds one set of weights per domain (the model's private part)."""

    def __init__(self) -> None:
        super().__init__()
        self.domain = 0

    @property
    def num_domains(self) -> int:
        raise NotImplementedError


def make_norm(kind: str, channels: int, groups: int) -> nn.Module:
    """A 2D norm layer: BatchNorm2d, or GroupNorm with the largest group count <= `groups` dividing channels."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    g = max(d for d in range(1, groups + 1) if channels % d == 0)
    return nn.GroupNorm(g, channels)


class DomainNorm(DomainModule):
    """`num_domains` independent norms over C channels; input and output [B, C, H, W] of one domain."""

    def __init__(self, channels: int, num_domains: int, kind: str = "batch", groups: int = 8) -> None:
        super().__init__()
        self.norms = nn.ModuleList(make_norm(kind, channels, groups) for _ in range(num_domains))

    @property
    def num_domains(self) -> int:
        return len(self.norms)

    def forward(self, x: Tensor) -> Tensor:
        return self.norms[self.domain](x)


def replace_norms(module: nn.Module, num_domains: int, kind: str, groups: int) -> int:
    """Swap every BatchNorm2d inside `module` for a DomainNorm in place; returns how many were swapped."""
    swapped = 0
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, DomainNorm(child.num_features, num_domains, kind, groups))
            swapped += 1
        elif not isinstance(child, DomainModule):
            swapped += replace_norms(child, num_domains, kind, groups)
    return swapped

"""Domain-balanced batches of 2D slices held in memory."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch


@dataclass
class SliceSet:
    """All training slices of one domain: images [N, 1, H, W] float32, labels [N, H, W] uint8, and the case each
    slice comes from, cases [N] int64 (when known)."""

    images: torch.Tensor
    labels: torch.Tensor
    cases: torch.Tensor | None = None
    class_slices: list[torch.Tensor] = field(init=False)  # per bone present: indices [n_c] of its slices

    def __post_init__(self) -> None:
        classes = range(1, int(self.labels.max()) + 1) if len(self.labels) else ()
        present = [(self.labels == c).flatten(1).any(1) for c in classes]
        self.class_slices = [torch.nonzero(row).flatten() for row in present if row.any()]

    def __len__(self) -> int:
        return len(self.images)

    def sample(self, n: int, foreground_fraction: float, generator: torch.Generator) -> torch.Tensor:
        """[n] slice indices: a `foreground_fraction` share shows a uniformly chosen bone (so small bones are
        seen as often as large ones, as nnU-Net oversamples foreground), the rest uniformly random slices."""
        picks = torch.randint(len(self), (n,), generator=generator)
        by_class = self.class_slices if foreground_fraction > 0 else []
        for i in range(n):
            if by_class and torch.rand((), generator=generator) < foreground_fraction:
                candidates = by_class[int(torch.randint(len(by_class), (), generator=generator))]
                picks[i] = candidates[int(torch.randint(len(candidates), (), generator=generator))]
        return picks


@dataclass
class Batch:
    """images [B, 1, H, W] float32, labels [B, H, W] int64, domains [B] int64."""

    images: torch.Tensor
    labels: torch.Tensor
    domains: torch.Tensor


def domain_balanced_batches(domains: Sequence[SliceSet], per_domain: int, generator: torch.Generator,
                            transform=None, foreground_fraction: float = 0.0) -> Iterator[Batch]:
    """Endless batches of `per_domain` random slices from every domain (B = per_domain * num_domains), so
    each domain's norm layers always see a batch of useful size.

    `transform(images [B,1,H,W], labels [B,H,W]) -> (images, labels)` augments each batch if given.
    """
    while True:
        picks = [slices.sample(per_domain, foreground_fraction, generator) for slices in domains]
        images = torch.cat([slices.images[idx] for slices, idx in zip(domains, picks)])
        labels = torch.cat([slices.labels[idx] for slices, idx in zip(domains, picks)]).long()
        if transform is not None:
            images, labels = transform(images, labels)
        ids = torch.arange(len(domains)).repeat_interleave(per_domain)
        yield Batch(images, labels, ids)

"""Domain-balanced batches of 2D slices held in memory."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch


@dataclass
class SliceSet:
    """All training slices of one domain: images [N, 1, H, W] float32, labels [N, H, W] uint8."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class Batch:
    """images [B, 1, H, W] float32, labels [B, H, W] int64, domains [B] int64."""

    images: torch.Tensor
    labels: torch.Tensor
    domains: torch.Tensor


def domain_balanced_batches(domains: Sequence[SliceSet], per_domain: int, generator: torch.Generator,
                            transform=None) -> Iterator[Batch]:
    """Endless batches of `per_domain` random slices from every domain (B = per_domain * num_domains), so
    each domain's norm layers always see a batch of useful size.

    `transform(images [B,1,H,W], labels [B,H,W]) -> (images, labels)` augments each batch if given.
    """
    while True:
        picks = [torch.randint(len(slices), (per_domain,), generator=generator) for slices in domains]
        images = torch.cat([slices.images[idx] for slices, idx in zip(domains, picks)])
        labels = torch.cat([slices.labels[idx] for slices, idx in zip(domains, picks)]).long()
        if transform is not None:
            images, labels = transform(images, labels)
        ids = torch.arange(len(domains)).repeat_interleave(per_domain)
        yield Batch(images, labels, ids)

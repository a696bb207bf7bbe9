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


def balanced_counts(batch_size: int, num_domains: int, step: int) -> list[int]:
    """Slices per domain in one batch: equal shares, the remainder rotating over domains with the step."""
    counts = [batch_size // num_domains] * num_domains
    for i in range(batch_size % num_domains):
        counts[(step + i) % num_domains] += 1
    return counts


def domain_balanced_batches(domains: Sequence[SliceSet], batch_size: int, generator: torch.Generator,
                            transform=None) -> Iterator[Batch]:
    """Endless batches with (about) batch_size / num_domains random slices of every domain.

    `transform(images [B,1,H,W], labels [B,H,W]) -> (images, labels)` augments each batch if given.
    """
    step = 0
    while True:
        images, labels, ids = [], [], []
        for d, (slices, n) in enumerate(zip(domains, balanced_counts(batch_size, len(domains), step))):
            idx = torch.randint(len(slices), (n,), generator=generator)
            images.append(slices.images[idx])
            labels.append(slices.labels[idx])
            ids.append(torch.full((n,), d, dtype=torch.long))
        batch_images, batch_labels = torch.cat(images), torch.cat(labels).long()
        if transform is not None:
            batch_images, batch_labels = transform(batch_images, batch_labels)
        yield Batch(batch_images, batch_labels, torch.cat(ids))
        step += 1

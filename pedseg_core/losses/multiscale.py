"""The multi-scale supervised contrastive regularization: one SupCon term per chosen feature scale."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from pedseg_core.config import ContrastiveConfig
from pedseg_core.losses.contrastive import supervised_contrastive_loss


class MultiScaleContrastive:
    """embeddings (one [B, D] per scale) and batch domains [B] -> mean over scales of the SupCon loss.

    `domain_labels[d]` is the contrastive label of model domain d (default: d itself); in a federation it is
    the joint's index in the federation, so a site's embeddings meet other domains' prototypes
    (`prototypes[s]` [M, D] per scale with `prototype_labels` [M]) as negatives.
    """

    def __init__(self, cfg: ContrastiveConfig, domain_labels: Sequence[int] | None = None,
                 prototypes: Sequence[Tensor] | None = None, prototype_labels: Tensor | None = None) -> None:
        self.weight = cfg.weight
        self.temperature = cfg.temperature
        self.domain_labels = None if domain_labels is None else torch.as_tensor(domain_labels)
        self.prototypes = prototypes
        self.prototype_labels = prototype_labels

    def __call__(self, embeddings: Sequence[Tensor], domains: Tensor) -> Tensor:
        device = domains.device
        labels = domains if self.domain_labels is None else self.domain_labels.to(device)[domains]
        prototype_labels = None if self.prototype_labels is None else self.prototype_labels.to(device)
        terms = [supervised_contrastive_loss(e, labels, self.temperature,
                                             None if self.prototypes is None else self.prototypes[s].to(device),
                                             prototype_labels)
                 for s, e in enumerate(embeddings)]
        return torch.stack(terms).mean()

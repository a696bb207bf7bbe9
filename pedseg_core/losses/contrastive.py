"""Supervised contrastive loss (Khosla et al., 2020) with the domain as the label, optionally against
prototypes: in a federation a site sees only its own domain, so other domains enter as their prototypes
(mean projected embeddings that the server aggregates), never as other sites' images."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def supervised_contrastive_loss(embeddings: Tensor, labels: Tensor, temperature: float = 0.1,
                                prototypes: Tensor | None = None, prototype_labels: Tensor | None = None
                                ) -> Tensor:
    """embeddings [N, D] (normalized inside), labels [N] -> scalar.

    Each anchor's candidates are the other embeddings of the batch plus the prototypes [M, D] (labels [M]);
    candidates with the anchor's label are positives, the rest negatives:
        L = mean over anchors with a positive of  -mean_p log( exp(z.z_p / t) / sum_a exp(z.z_a / t) ).
    Zero when no anchor has a positive.
    """
    z = F.normalize(embeddings.float(), dim=1)
    candidates, candidate_labels = z, labels
    if prototypes is not None and len(prototypes):
        candidates = torch.cat([z, F.normalize(prototypes.float(), dim=1)])
        candidate_labels = torch.cat([labels, prototype_labels])
    logits = z @ candidates.T / temperature  # [N, N + M]
    self_mask = torch.zeros_like(logits, dtype=torch.bool)
    self_mask[:, : len(z)] = torch.eye(len(z), dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (labels[:, None] == candidate_labels[None, :]) & ~self_mask
    counts = positives.sum(1)
    has_positive = counts > 0
    if not has_positive.any():
        return embeddings.sum() * 0.0
    per_anchor = -(log_prob.masked_fill(~positives, 0.0)).sum(1)[has_positive] / counts[has_positive]
    return per_anchor.mean()

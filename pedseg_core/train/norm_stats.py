"""Re-estimating BatchNorm running statistics for new weights.

After federated averaging, a site's private BatchNorm statistics were computed with its own pre-averaging
filters; before evaluating the personalized model (global filters + private layers) the site recomputes them
on its own training slices (no gradient, no parameter change). GroupNorm has no statistics: a no-op.
"""

from __future__ import annotations

import torch

from pedseg_core.device import device_of
from pedseg_core.model.domain_norm import DomainNorm
from pedseg_core.model.unet import MultiDomainUNet


@torch.no_grad()
def recalibrate_batch_norm(model: MultiDomainUNet, domain: int, images: torch.Tensor, batch_size: int) -> int:
    """images [N, 1, H, W] of `domain` -> that domain's BatchNorm running mean/var become their average over
    these slices for the current weights (other domains untouched). Returns the number of layers updated."""
    norms = [m.norms[domain] for m in model.modules()
             if isinstance(m, DomainNorm) and isinstance(m.norms[domain], torch.nn.BatchNorm2d)]
    if not norms or len(images) == 0:
        return 0
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
    was_training = model.training
    model.train()
    device = device_of(model)
    for start in range(0, len(images), batch_size):
        model(images[start:start + batch_size].to(device), domain)
    model.train(was_training)
    for m, (momentum, count) in zip(norms, saved):
        m.momentum = momentum
        m.num_batches_tracked.copy_(count)
    return len(norms)

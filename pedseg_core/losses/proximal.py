"""FedProx's proximal term, on the shared parameters only."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ProximalTerm:
    """model -> mu/2 * sum over shared parameters of ||w - w_global||^2 (private layers are not pulled)."""

    def __init__(self, model: nn.Module, global_shared: dict[str, Tensor], mu: float) -> None:
        params = dict(model.named_parameters())
        self.pairs = [(params[k], v.detach().to(params[k].device, copy=True)) for k, v in global_shared.items()
                      if k in params]
        self.mu = mu

    def __call__(self, model: nn.Module) -> Tensor:
        total = sum(((w - g) ** 2).sum() for w, g in self.pairs)
        return 0.5 * self.mu * torch.as_tensor(total)

"""Where training and inference run: `train.device` (auto | cpu | cuda | cuda:N) -> a torch device."""

from __future__ import annotations

import torch
from torch import nn

from pedseg_core.errors import PedsegError


def resolve_device(name: str) -> torch.device:
    """"auto" is the first CUDA GPU when torch sees one, else the CPU; an unavailable GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise PedsegError(f"train.device '{name}' is not a device (auto, cpu, cuda or cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise PedsegError(f"train.device '{name}': only cpu and cuda are supported")
    if device.type == "cuda" and not (torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()):
        raise PedsegError(f"train.device '{name}': torch sees {torch.cuda.device_count()} CUDA GPU(s)")
    return device


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def to_cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict's tensors on the CPU (what leaves a site, what checkpoints hold); no copy when already there."""
    return {k: v.cpu() for k, v in state.items()}

"""ImageNet initialization of the encoder from a torchvision-format ResNet checkpoint.

The checkpoint's keys (conv1.weight, bn1.*, layerN.i.{conv,bn}{1,2}.*, layerN.0.downsample.{0,1}.*, fc.*) map
one to one onto `TorchvisionLayoutResNetEncoder`; each BN tensor is copied into every domain's norm; the RGB
stem is summed over colour channels for single-channel MRI. Every encoder tensor must be consumed.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from pedseg_core.errors import PedsegError
from pedseg_core.model.domain_norm import DomainNorm
from pedseg_core.torch_files import load_torch_file

IMAGENET_URLS = {
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "resnet34": "https://download.pytorch.org/models/resnet34-b627a593.pth",
}
CLASSIFIER_PREFIX = "fc."
BN_RUNNING_KEYS = ("running_mean", "running_var", "num_batches_tracked")


def init_encoder(encoder: nn.Module, weights: str) -> dict[str, int]:
    """`weights`: "none" (keep the random init), "imagenet" (download torchvision's file for the backbone, if
    online) or the path of a local torchvision-format checkpoint. Returns counts of what was loaded."""
    if weights == "none":
        return {}
    if weights == "imagenet":
        state = _download(encoder)
        source = "torchvision ImageNet weights"
    else:
        state = read_checkpoint(Path(weights))
        source = weights
    return load_torchvision_resnet(encoder, state, source)


def read_checkpoint(path: Path) -> dict[str, Tensor]:
    state = load_torch_file(path, "ImageNet checkpoint")
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise PedsegError(f"{path}: not a torchvision ResNet state dict")
    return state


def _download(encoder: nn.Module) -> dict[str, Tensor]:
    depth = sum(len(getattr(encoder, f"layer{i}")) for i in range(1, 5))
    backbone = {4: "resnet10", 8: "resnet18", 16: "resnet34"}[depth]
    if backbone not in IMAGENET_URLS:
        raise PedsegError(f"no ImageNet weights are published for {backbone}; use resnet18 or resnet34")
    try:
        return torch.hub.load_state_dict_from_url(IMAGENET_URLS[backbone], map_location="cpu", progress=True)
    except Exception as err:  # noqa: BLE001 - offline sites get one clear line
        raise PedsegError(
            f"cannot download ImageNet weights ({IMAGENET_URLS[backbone]}): {err}; download the file "
            "elsewhere and set model.encoder_weights to its local path") from None


def load_torchvision_resnet(encoder: nn.Module, state: dict[str, Tensor], source: str) -> dict[str, int]:
    """Copy a torchvision ResNet state dict into `encoder`; raises PedsegError on any key or shape that
    does not fit, on checkpoint tensors left unused, and on encoder tensors left uninitialized."""
    targets = encoder.state_dict()
    norm_of = {name: m for name, m in encoder.named_modules() if isinstance(m, DomainNorm)}
    filled: set[str] = set()
    counts = {"tensors": 0, "skipped_for_group_norm": 0}
    problems = []
    with torch.no_grad():
        for key, value in state.items():
            if key.startswith(CLASSIFIER_PREFIX):
                continue
            module_name, _, tensor_name = key.rpartition(".")
            if module_name in norm_of:
                for d, norm in enumerate(norm_of[module_name].norms):
                    own_key = f"{module_name}.norms.{d}.{tensor_name}"
                    if isinstance(norm, nn.GroupNorm) and tensor_name in BN_RUNNING_KEYS:
                        counts["skipped_for_group_norm"] += 1
                        continue
                    problems += _copy(targets, own_key, value, key)
                    filled.add(own_key)
            else:
                if key == "conv1.weight" and value.shape[1] != targets[key].shape[1]:
                    value = value.sum(dim=1, keepdim=True)  # RGB stem -> one MR channel
                problems += _copy(targets, key, value, key)
                filled.add(key)
            counts["tensors"] += 1
    missing = sorted(set(targets) - filled)
    if missing:
        problems.append(f"{len(missing)} encoder tensors not in the checkpoint, e.g. {', '.join(missing[:3])}")
    if problems:
        raise PedsegError(f"{source}: not a matching torchvision ResNet checkpoint: {'; '.join(problems[:3])}")
    return counts


def _copy(targets: dict[str, Tensor], own_key: str, value: Tensor, source_key: str) -> list[str]:
    if own_key not in targets:
        return [f"unexpected key {source_key}"]
    if tuple(targets[own_key].shape) != tuple(value.shape):
        return [f"{source_key} has shape {tuple(value.shape)}, expected {tuple(targets[own_key].shape)}"]
    targets[own_key].copy_(value)
    return []

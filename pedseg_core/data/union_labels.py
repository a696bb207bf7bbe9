"""The union label space of several joints ("background" plus every "<joint>/<bone>"): used by the `shared`
scheme's single head and by the shape prior, which both see the bones of all joints at once."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def union_label_space(joint_labels: Sequence[dict[str, int]], names: Sequence[str]) -> tuple[dict[str, int], list[int]]:
    """({"background": 0, "<joint>/<bone>": value, ...}, per joint the offset of its bones in that space)."""
    union, offsets = {"background": 0}, []
    for name, labels in zip(names, joint_labels):
        offsets.append(len(union) - 1)
        union |= {f"{name}/{bone}": offsets[-1] + v for bone, v in labels.items() if v != 0}
    return union, offsets


def to_union_labels(labels: torch.Tensor, offset: int) -> torch.Tensor:
    """A joint's label map -> union label values (background stays 0)."""
    return torch.where(labels > 0, labels.long() + offset, 0)


def union_to_joint_lut(union_size: int, offset: int, num_classes: int) -> np.ndarray:
    """[union_size] uint8 lookup table: union label -> the joint's own label (other joints' bones -> 0)."""
    lut = np.zeros(union_size, dtype=np.uint8)
    lut[offset + 1: offset + num_classes] = np.arange(1, num_classes)
    return lut

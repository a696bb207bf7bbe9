"""Training-time augmentation of 2D slices with MONAI dictionary transforms."""

from __future__ import annotations

import math

import torch
from monai.transforms import (
    Compose,
    RandAdjustContrastd,
    RandAffined,
    RandGaussianNoised,
    RandScaleIntensityd,
)

from pedseg_core.config import DataConfig


class SliceAugmentation:
    """Random rotation/scaling (image and label together), intensity scaling, gamma and Gaussian noise.

    Called on a batch: images [B, 1, H, W], labels [B, H, W] -> same shapes, each slice augmented on its own.
    """

    def __init__(self, cfg: DataConfig, seed: int) -> None:
        p = cfg.augment_probability
        keys = ("image", "label")
        self.transform = Compose([
            RandAffined(keys, prob=p, rotate_range=math.radians(cfg.rotate_degrees),
                        scale_range=(cfg.scale_range, cfg.scale_range), mode=("bilinear", "nearest"),
                        padding_mode="zeros"),
            RandScaleIntensityd("image", factors=0.15, prob=p),
            RandAdjustContrastd("image", gamma=(0.7, 1.5), prob=p),
            RandGaussianNoised("image", std=cfg.noise_std, prob=p),
        ])
        self.transform.set_random_state(seed)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out_images, out_labels = [], []
        for image, label in zip(images, labels):
            sample = self.transform({"image": image, "label": label[None].float()})
            out_images.append(torch.as_tensor(sample["image"]).as_subclass(torch.Tensor).float())
            out_labels.append(torch.as_tensor(sample["label"]).as_subclass(torch.Tensor)[0].round().long())
        return torch.stack(out_images), torch.stack(out_labels)

"""Volume -> 2D slices and back: through-plane axis from the header spacing, robust intensity scaling,
in-plane resampling to the preset's size (MONAI transforms)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from monai.transforms import Resize, ScaleIntensityRangePercentiles

from pedseg_core.config import DataConfig
from pedseg_core.data.geometry import through_plane_axis


@dataclass(frozen=True)
class SliceGeometry:
    """How a volume was sliced, to rebuild a volume of the same shape from slice predictions."""

    axis: int  # through-plane axis in the stored array
    shape: tuple[int, int, int]  # the stored volume's shape

    @property
    def in_plane_shape(self) -> tuple[int, int]:
        return tuple(s for i, s in enumerate(self.shape) if i != self.axis)


def volume_to_slices(volume: np.ndarray, axis: int) -> np.ndarray:
    """[X, Y, Z] -> [S, A, B] with S along `axis` (in-plane axes keep their order)."""
    return np.moveaxis(volume, axis, 0)


def slices_to_volume(slices: np.ndarray, axis: int) -> np.ndarray:
    """Inverse of `volume_to_slices`: [S, A, B] -> the stored [X, Y, Z] layout."""
    return np.moveaxis(slices, 0, axis)


def normalize_intensity(volume: np.ndarray, cfg: DataConfig) -> np.ndarray:
    """Robust per-volume scaling: percentiles (lower, upper) -> [0, 1], clipped. Any shape, float32 out."""
    scale = ScaleIntensityRangePercentiles(
        lower=cfg.lower_percentile, upper=cfg.upper_percentile, b_min=0.0, b_max=1.0, clip=True)
    return np.asarray(scale(volume.astype(np.float32)), dtype=np.float32)


def resize_slices(slices: np.ndarray | torch.Tensor, size: tuple[int, int], is_label: bool) -> torch.Tensor:
    """[S, A, B] -> [S, size[0], size[1]]: bilinear with anti-aliasing for images, nearest for labels."""
    if is_label:
        resize = Resize(spatial_size=size, mode="nearest")
    else:
        resize = Resize(spatial_size=size, mode="bilinear", anti_aliasing=True)
    tensor = torch.as_tensor(np.asarray(slices) if not isinstance(slices, torch.Tensor) else slices)
    out = resize(tensor.float())  # the slice axis acts as MONAI's channel axis: one call per volume
    return torch.as_tensor(out).as_subclass(torch.Tensor)


def prepare_image(volume: np.ndarray, spacing: tuple[float, ...], cfg: DataConfig
                  ) -> tuple[torch.Tensor, SliceGeometry]:
    """A 3D image -> ([S, 1, N, N] normalized float32 slices, its geometry), N = cfg.image_size."""
    axis = through_plane_axis(spacing)
    geometry = SliceGeometry(axis=axis, shape=tuple(volume.shape))
    slices = volume_to_slices(normalize_intensity(volume, cfg), axis)
    return resize_slices(slices, (cfg.image_size, cfg.image_size), is_label=False)[:, None], geometry


def prepare_label(label: np.ndarray, geometry: SliceGeometry, cfg: DataConfig) -> torch.Tensor:
    """A 3D label volume -> [S, N, N] uint8 slices matching `prepare_image`."""
    slices = volume_to_slices(label, geometry.axis)
    return resize_slices(slices, (cfg.image_size, cfg.image_size), is_label=True).round().to(torch.uint8)


def logits_to_volume(logits: torch.Tensor, geometry: SliceGeometry) -> np.ndarray:
    """[S, C, N, N] slice logits -> uint8 label volume of `geometry.shape` (bilinear logits, then argmax)."""
    full = torch.nn.functional.interpolate(
        logits.float(), size=geometry.in_plane_shape, mode="bilinear", align_corners=False)
    labels = full.argmax(dim=1).to(torch.uint8).numpy()
    return np.ascontiguousarray(slices_to_volume(labels, geometry.axis))

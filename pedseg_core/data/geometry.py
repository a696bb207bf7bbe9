"""Voxel geometry read from a NIfTI affine: spacing and the through-plane (thick-slice) axis."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from nibabel.affines import voxel_sizes


def voxel_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """mm per array axis: the norms of the affine's first three columns (the header's sform/qform geometry)."""
    return tuple(float(s) for s in voxel_sizes(np.asarray(affine, dtype=float)))


def through_plane_axis(spacing: Sequence[float]) -> int:
    """The slicing axis: the one with the largest voxel spacing (the last of equals, i.e. axis 2 if isotropic)."""
    spacing = np.asarray(spacing[:3], dtype=float)
    return int(np.flatnonzero(spacing == spacing.max())[-1])

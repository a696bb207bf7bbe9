"""Post-processing of a predicted label volume: each bone loses its stray islands and keeps its main pieces.

A bone is one piece of tissue; stray islands of its label elsewhere in the volume (often on an unlabelled bone
nearby) barely change Dice but dominate the surface distances (HD95, ASSD). Keeping only the largest 3D
connected component (nnU-Net's and MONAI's `KeepLargestConnectedComponent` rule) removes them, but a network
also splits a thin bone (the scapula's blade) into two large fragments, and that rule then deletes a real part
of it. So each bone keeps its largest component and every other component of at least `min_fraction` of its
size (full 3D connectivity, 26 neighbours); `min_fraction` 1.0 is the largest-component rule. Removed voxels
become background.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from skimage.measure import label as connected_components

MIN_FRACTION = 0.1  # islands seen on held-out data: <= 0.04 of the bone; split fragments: 0.1-0.6


def keep_largest_components(labels: np.ndarray, values: Iterable[int], min_fraction: float = MIN_FRACTION
                            ) -> np.ndarray:
    """labels [X, Y, Z] integer volume -> a copy (same shape and dtype) in which each label in `values` keeps
    its largest connected component and the others of at least `min_fraction` of its size."""
    cleaned = labels.copy()
    for value in {int(v) for v in values if v != 0}:
        mask = labels == value
        if not mask.any():
            continue
        components = connected_components(mask, connectivity=mask.ndim)
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        cleaned[mask & (sizes < min_fraction * sizes.max())[components]] = 0
    return cleaned

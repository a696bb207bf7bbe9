"""Post-processing of a predicted label volume: each bone keeps its largest 3D connected component.

A bone is one piece of tissue; stray islands of its label elsewhere in the volume (often on an unlabelled bone
nearby) barely change Dice but dominate the surface distances (HD95, ASSD). MONAI's
`KeepLargestConnectedComponent` removes them, per label and with full 3D connectivity (26 neighbours); removed
voxels become background.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from monai.transforms import KeepLargestConnectedComponent


def keep_largest_components(labels: np.ndarray, values: Iterable[int]) -> np.ndarray:
    """labels [X, Y, Z] integer volume -> the same shape and dtype, each label in `values` reduced to its
    largest connected component."""
    applied = [int(v) for v in values if v != 0 and (labels == v).any()]
    if not applied:
        return labels
    transform = KeepLargestConnectedComponent(applied_labels=applied, is_onehot=False, independent=True)
    return np.asarray(transform(labels[None].copy()))[0].astype(labels.dtype, copy=False)  # MONAI works in place

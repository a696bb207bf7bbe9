"""The one NIfTI reader of pedseg: every volume it reads (datasets, predictions, references, reports) goes
through `read_nifti`, so every unreadable or malformed file is the same one-line error."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from pedseg_core.errors import DatasetError


def read_nifti(path: Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    """A NIfTI volume as (data [X, Y, Z], its image: affine and header).

    Integer data keeps its dtype (labels), anything else becomes float32. A 4D file holding a single
    volume is squeezed to 3D. Raises DatasetError with one "<path>: ..." line when the file cannot be
    read or does not hold a non-empty 3D volume.
    """
    path = Path(path)
    try:
        image = nib.load(path)
        data = np.asanyarray(image.dataobj)
        if not np.issubdtype(data.dtype, np.integer):
            data = data.astype(np.float32, copy=False)
    except Exception as error:  # nibabel, gzip, zlib, EOFError, numpy: each fails its own way
        reason = " ".join(str(error).split()) or type(error).__name__
        raise DatasetError(path, [f"{path}: cannot read NIfTI: {reason}"]) from None
    if data.size == 0:
        raise DatasetError(path, [f"{path}: empty volume (shape {data.shape})"])
    if data.ndim > 3 and all(size == 1 for size in data.shape[3:]):
        data = data.reshape(data.shape[:3])
    if data.ndim != 3:
        raise DatasetError(path, [f"{path}: expected a 3D volume, got shape {data.shape}"])
    return data, image


def load_volume(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """`read_nifti` as (data [X, Y, Z], 4x4 float64 affine)."""
    data, image = read_nifti(path)
    return data, np.array(image.affine, dtype=np.float64)

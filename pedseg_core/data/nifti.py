"""The one NIfTI reader of pedseg: every volume it reads (datasets, predictions, references, reports) goes
through `read_nifti`, so every unreadable, malformed or oversized file is the same one-line error.

The size a header declares is checked before any voxel is read or decompressed: a small .nii.gz can declare
(and inflate to) gigabytes of voxels."""

from __future__ import annotations

import io
import math
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.openers import ImageOpener

from pedseg_core.errors import DatasetError

MAX_VOLUME_BYTES = 2**28  # one volume in memory as read (float32 or wider): 256 MiB, e.g. 512 x 512 x 256
MAX_HEADER_BYTES = 2**24  # a NIfTI header with its extensions (vox_offset): 16 MiB
_HEADER_CLASSES = {klass.sizeof_hdr: klass for klass in (nib.Nifti1Header, nib.Nifti2Header)}


def volume_bytes(shape: tuple[int, ...], itemsize: int) -> int:
    """Bytes of a volume of this shape in memory as pedseg reads it: float32, or its own type when wider."""
    return math.prod(int(size) for size in shape) * max(4, int(itemsize))


def check_volume_size(path: Path, shape: tuple[int, ...], itemsize: int) -> None:
    """Raise DatasetError when a volume of the declared shape and voxel size would exceed MAX_VOLUME_BYTES."""
    size = volume_bytes(shape, itemsize)
    if size > MAX_VOLUME_BYTES:
        raise DatasetError(path, [
            f"{path}: declared shape {' x '.join(str(int(s)) for s in shape)} is {size / 2**20:,.0f} MiB as read, "
            f"over the cap of {MAX_VOLUME_BYTES // 2**20} MiB per volume (refused before reading its voxels)"
        ])


def read_nifti(path: Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    """A NIfTI volume as (data [X, Y, Z], its image: affine and header).

    Integer data keeps its dtype (labels), anything else becomes float32. A 4D file holding a single
    volume is squeezed to 3D. Raises DatasetError with one "<path>: ..." line when the file cannot be
    read, declares more than MAX_VOLUME_BYTES, or does not hold a non-empty 3D volume.
    """
    path = Path(path)
    try:
        image = _load_header_checked(path)
        data = np.asanyarray(image.dataobj)
        if not np.issubdtype(data.dtype, np.integer):
            data = data.astype(np.float32, copy=False)
    except DatasetError:
        raise
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


def _load_header_checked(path: Path):
    """The lazy image (no voxels read), once its header's declared size passed the caps.

    A NIfTI header is read from the first bytes alone (nibabel would read its extensions up to vox_offset)."""
    with ImageOpener(path) as stream:
        start = stream.read(max(_HEADER_CLASSES))
    klass = _HEADER_CLASSES.get(int.from_bytes(start[:4], "little")) or \
        _HEADER_CLASSES.get(int.from_bytes(start[:4], "big"))
    if klass is not None:
        header = klass.from_fileobj(io.BytesIO(start[: klass.sizeof_hdr]), check=False)
        if int(header["vox_offset"]) > MAX_HEADER_BYTES:
            raise DatasetError(path, [f"{path}: header declares {int(header['vox_offset']):,} bytes before its "
                                      f"voxels, over the cap of {MAX_HEADER_BYTES:,}"])
        check_volume_size(path, header.get_data_shape(), header.get_data_dtype().itemsize)
    image = nib.load(path)  # lazy: reads the header (and extensions), not the voxels
    check_volume_size(path, image.header.get_data_shape(), image.header.get_data_dtype().itemsize)
    return image

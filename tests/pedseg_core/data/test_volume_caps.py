"""Decompression bombs: a NIfTI's declared size is capped from its header before any voxel is inflated."""

import gzip
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from pedseg_core.data.nifti import MAX_HEADER_BYTES, MAX_VOLUME_BYTES, read_nifti
from pedseg_core.errors import DatasetError

BOMB_SHAPE = (1024, 1024, 256)  # float32: 1 GiB of voxels


def _write_bomb(path, shape=BOMB_SHAPE, vox_offset=352):
    """A ~1 MB .nii.gz whose header declares `shape` float32 and whose gzip stream inflates to all of it."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float32)
    header["vox_offset"] = vox_offset
    zeros = gzip.compress(bytes(2**24), compresslevel=9)  # one gzip member: 16 MiB of zeros
    n_members = -(-int(np.prod(shape)) * 4 // 2**24)
    with path.open("wb") as out:
        out.write(gzip.compress(header.binaryblock + bytes(4)))
        for _ in range(n_members):
            out.write(zeros)
    return path


def test_bomb_is_refused_from_its_header(tmp_path):
    path = _write_bomb(tmp_path / "bomb.nii.gz")
    assert path.stat().st_size < 2 * 2**20
    with pytest.raises(DatasetError) as caught:
        read_nifti(path)
    (line,) = caught.value.problems
    assert str(path) in line and "1024 x 1024 x 256" in line and "1,024 MiB" in line
    assert f"{MAX_VOLUME_BYTES // 2**20} MiB" in line


def test_huge_extensions_are_refused_before_nibabel_reads_them(tmp_path):
    path = _write_bomb(tmp_path / "ext.nii.gz", shape=(8, 8, 8), vox_offset=MAX_HEADER_BYTES + 16)
    with pytest.raises(DatasetError, match="bytes before its voxels"):
        read_nifti(path)


def test_nifti2_and_uncompressed_files_are_checked_too(tmp_path):
    header = nib.Nifti2Header()
    header.set_data_shape(BOMB_SHAPE)
    header.set_data_dtype(np.float64)
    path = tmp_path / "big.nii"
    path.write_bytes(header.binaryblock + bytes(4))  # declares 2 GiB, holds none of it
    with pytest.raises(DatasetError, match="2,048 MiB as read"):
        read_nifti(path)


def test_a_volume_at_the_cap_is_read(tmp_path):
    path = tmp_path / "ok.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((64, 64, 16), np.int16), np.eye(4)), path)
    data, _ = read_nifti(path)
    assert data.shape == (64, 64, 16) and data.dtype == np.int16


PEAK_SCRIPT = """
import resource, subprocess, sys
proc = subprocess.run([sys.executable, "-m", "pedseg", "data", "check", sys.argv[1]], capture_output=True, text=True)
print(proc.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
print(proc.stderr)
"""


def test_data_check_of_a_bomb_exits_2_under_400_mb(tmp_path, write_dataset):
    root = write_dataset(n_train=1, n_test=0)
    image = root / "imagesTr" / "case_000_0000.nii.gz"
    _write_bomb(image)
    proc = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(root)], capture_output=True, text=True,
                          timeout=300, check=True)
    first, stderr = proc.stdout.split("\n", 1)
    status, peak_kib = map(int, first.split())
    assert status == 2
    assert f"{image}: declared shape 1024 x 1024 x 256" in stderr
    assert peak_kib < 400 * 1024, f"peak {peak_kib / 1024:.0f} MiB"

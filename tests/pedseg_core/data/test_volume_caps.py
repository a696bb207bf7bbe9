"""Decompression bombs: a NIfTI's or DICOM's declared size is capped from its header before anything is
inflated."""

import gzip
import subprocess
import sys
import zlib

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid

from pedseg_core.data.dicom_import import MAX_INFLATED_BYTES, import_dicom
from pedseg_core.data.nifti import MAX_HEADER_BYTES, MAX_VOLUME_BYTES, read_nifti
from pedseg_core.errors import DatasetError

BOMB_SHAPE = (1024, 1024, 256)  # float32: 1 GiB of voxels
MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


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


def _deflated_dicom(path, pixel_bytes):
    """A deflated-syntax MR slice whose PixelData holds `pixel_bytes` zero bytes (streamed: ~1 KB per MB)."""
    dataset = Dataset()
    dataset.SOPClassUID = MR_STORAGE
    dataset.SOPInstanceUID = generate_uid()
    dataset.SeriesInstanceUID = "1.2.826.0.1.3680043.2.1125.9"
    dataset.Modality = "MR"
    dataset.SamplesPerPixel, dataset.Rows, dataset.Columns = 1, 512, 512
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.MediaStorageSOPClassUID = MR_STORAGE
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    dataset.save_as(path, enforce_file_format=True)
    raw = path.read_bytes()
    start = 132 + 12 + pydicom.filereader.read_file_meta_info(path).FileMetaInformationGroupLength
    body = zlib.decompress(raw[start:], -zlib.MAX_WBITS)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    pixel_header = b"\xe0\x7f\x10\x00OW\x00\x00" + pixel_bytes.to_bytes(4, "little")
    with path.open("wb") as out:
        out.write(raw[:start] + deflater.compress(body + pixel_header))
        chunk = bytes(2**24)
        for _ in range(pixel_bytes // 2**24):
            out.write(deflater.compress(chunk))
        out.write(deflater.flush())
    return path


def test_deflated_dicom_bomb_is_refused_before_inflating(tmp_path):
    dicom = tmp_path / "dicom"
    dicom.mkdir()
    path = _deflated_dicom(dicom / "IM0001", 2**30)
    assert path.stat().st_size < 2 * 2**20
    with pytest.raises(DatasetError) as caught:
        import_dicom(dicom, tmp_path / "out", "knee")
    assert caught.value.problems == [f"{dicom}: IM0001: deflated DICOM inflates to over "
                                     f"{MAX_INFLATED_BYTES // 2**20} MiB, the cap per file (refused before "
                                     "inflating it)"]


def test_small_deflated_dicom_is_read(tmp_path):
    dicom = tmp_path / "dicom"
    dicom.mkdir()
    _deflated_dicom(dicom / "IM0001", 512 * 512 * 2)
    with pytest.raises(DatasetError, match="a single 2D slice"):  # read, then refused as a series
        import_dicom(dicom, tmp_path / "out", "knee")


def test_dicom_series_declaring_too_many_voxels_is_refused_before_its_pixels(tmp_path):
    dicom = tmp_path / "dicom"
    dicom.mkdir()
    for index in range(3):
        path = _deflated_dicom(dicom / f"IM{index:04d}", 8)
        dataset = pydicom.dcmread(path)
        dataset.Rows = dataset.Columns = 30000
        dataset.save_as(path)
    with pytest.raises(DatasetError) as caught:
        import_dicom(dicom, tmp_path / "out", "knee")
    (line,) = caught.value.problems
    assert line.startswith(f"{dicom}: series ") and "declares 30000 x 30000 x 3 voxels, 10,300 MiB as read" in line

"""DICOM in: series written with SimpleITK, imported, and read back with nibabel."""

from __future__ import annotations

import gzip
import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from pedseg_core.data.dicom_import import import_dicom
from pedseg_core.data.joints import joint_labels
from pedseg_core.data.nifti import load_volume
from pedseg_core.data.nnunet import scan_dataset
from pedseg_core.data.validate import check_dataset
from pedseg_core.errors import DatasetError, PedsegError

SPACING = (0.6, 0.8, 3.0)  # mm: columns, rows, slices (non-square pixels catch a swapped PixelSpacing)
ORIGIN = np.array([12.5, -30.0, 41.0])  # LPS mm
PATIENT = "DOE^JOHN"
MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def _rotation(degrees: float) -> np.ndarray:
    """An oblique, flipped slice frame (columns: row cosines, column cosines, normal), a proper rotation."""
    a, b = np.deg2rad(degrees), np.deg2rad(degrees / 2)
    about_y = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    about_x = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return about_x @ about_y @ np.diag([1.0, -1.0, -1.0])


def _volume(shape, offset: int = 0) -> np.ndarray:
    """Distinct int16 values, array axes (columns, rows, slices) like nibabel's."""
    return (np.arange(np.prod(shape)).reshape(shape) + offset).astype(np.int16)


def _write_series(folder, volume, uid, frame=None, spacing=SPACING, origin=ORIGIN, heights=None, seed=0,
                  modality="MR", prefix="IM", first_instance=1):
    """One file per slice, in shuffled file-name order; slice k at origin + heights[k] * normal.

    ``heights`` (mm along the normal) default to k * spacing[2]; decreasing heights stack the slices against
    the normal. Returns the written paths by slice index.
    """
    frame = _rotation(25.0) if frame is None else frame
    n = volume.shape[2]
    heights = np.arange(n) * spacing[2] if heights is None else np.asarray(heights, dtype=float)
    folder.mkdir(parents=True, exist_ok=True)
    names = np.random.default_rng(seed).permutation(n)
    writer = sitk.ImageFileWriter()
    writer.SetImageIO("GDCMImageIO")  # the file names have no extension
    writer.KeepOriginalImageUIDOn()
    paths = []
    for k in range(n):
        image = sitk.GetImageFromArray(np.ascontiguousarray(volume[:, :, k].T))  # rows x columns
        image.SetSpacing(spacing[:2])
        position = origin + heights[k] * frame[:, 2]
        tags = {
            "0008|0016": MR_STORAGE,
            "0008|0018": f"{uid}.{first_instance + k}",
            "0008|0060": modality,
            "0010|0010": PATIENT,
            "0010|0020": "PID-12345",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": uid,
            "0020|0013": str(first_instance + k),
            "0020|0032": "\\".join(f"{v:.6f}" for v in position),
            "0020|0037": "\\".join(f"{v:.6f}" for v in [*frame[:, 0], *frame[:, 1]]),
            "0028|0030": f"{spacing[1]}\\{spacing[0]}",  # between rows, between columns
            "0018|0050": str(spacing[2]),
        }
        for key, value in tags.items():
            image.SetMetaData(key, value)
        paths.append(folder / f"{prefix}{names[k]:04d}")
        writer.SetFileName(str(paths[-1]))
        writer.Execute(image)
    return paths


def _expected_affine(frame, spacing=SPACING, origin=ORIGIN) -> np.ndarray:
    """The RAS affine of a stack whose voxel (0, 0, 0) is at LPS ``origin``: LPS affine, x and y negated."""
    lps = np.eye(4)
    lps[:3, :3] = frame @ np.diag(spacing)
    lps[:3, 3] = origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def _strip_pixel_data(path) -> None:
    """Cut a SimpleITK-written file before its (last) PixelData element: still DICOM, but no pixels."""
    data = path.read_bytes()
    cut = data.rfind(b"\xe0\x7f\x10\x00")
    assert cut > 132
    path.write_bytes(data[:cut])


def _refused(dicom, tmp_path) -> list[str]:
    """The problem lines import_dicom refuses dicom with, after checking that it wrote nothing."""
    out = tmp_path / "out"
    with pytest.raises(DatasetError) as error:
        import_dicom(dicom, out, "knee")
    assert not out.exists()
    assert str(error.value) == "\n".join(error.value.problems)
    return error.value.problems


@pytest.fixture
def two_series(tmp_path):
    """dicom/patient/t1 (oblique, slices along the normal) and dicom/patient/pd (stacked against the normal)."""
    dicom = tmp_path / "dicom"
    first, second = _volume((5, 4, 6)), _volume((6, 5, 4), offset=1000)
    _write_series(dicom / "patient" / "t1", first, "1.2.826.0.1.3680043.2.1125.1.1", seed=1)
    _write_series(dicom / "patient" / "pd", second, "1.2.826.0.1.3680043.2.1125.1.2", frame=_rotation(-40.0),
                  spacing=(0.6, 0.8, 4.0), heights=-4.0 * np.arange(4), seed=2)
    return dicom, first, second


def test_import_preserves_values_and_geometry(two_series, tmp_path, capfd):
    dicom, first, second = two_series
    out = tmp_path / "out"
    report = import_dicom(dicom, out, "knee")

    # Cases in folder order: patient/pd before patient/t1.
    assert [case.case_id for case in report.cases] == ["knee_001", "knee_002"]
    assert [case.source for case in report.cases] == [dicom / "patient" / "pd", dicom / "patient" / "t1"]
    pd, t1 = report.cases
    assert t1.shape == (5, 4, 6) and pd.shape == (6, 5, 4)
    assert t1.spacing == pytest.approx(SPACING, abs=1e-5)
    assert pd.spacing == pytest.approx((0.6, 0.8, 4.0), abs=1e-5)
    assert t1.image == out / "imagesTs" / "knee_002_0000.nii.gz"

    image = nib.load(t1.image)
    assert image.header["sform_code"] > 0 and image.header["qform_code"] > 0
    np.testing.assert_array_equal(np.asanyarray(image.dataobj), first)
    np.testing.assert_allclose(image.affine, _expected_affine(_rotation(25.0)), atol=1e-4)

    # Stacked against the normal: the importer orders slices along it, so the array's slice axis is reversed
    # and the origin is the last written slice, while every voxel keeps its value at its world position.
    image = nib.load(pd.image)
    frame = _rotation(-40.0)
    np.testing.assert_array_equal(np.asanyarray(image.dataobj), second[:, :, ::-1])
    last = ORIGIN + 3 * -4.0 * frame[:, 2]
    np.testing.assert_allclose(image.affine, _expected_affine(frame, (0.6, 0.8, 4.0), last), atol=1e-4)
    world = image.affine @ [2, 3, 1, 1]  # voxel (2, 3, 1) of the import ...
    lps = ORIGIN + frame @ (np.array([2, 3, 2]) * [0.6, 0.8, -4.0])  # ... is voxel (2, 3, 2) as written
    np.testing.assert_allclose(world[:3], [-lps[0], -lps[1], lps[2]], atol=1e-4)
    assert "WARNING" not in capfd.readouterr().err


def test_import_writes_metadata_without_identifying_tags(two_series, tmp_path):
    dicom, _, _ = two_series
    out = tmp_path / "out"
    import_dicom(dicom, out, "ankle")
    meta = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    assert meta["channel_names"] == {"0": "MRI"}
    assert meta["labels"] == joint_labels("ankle")
    assert meta["file_ending"] == ".nii.gz" and meta["numTraining"] == 0 and meta["numTest"] == 2
    rows = [line.split("\t") for line in (out / "series.tsv").read_text(encoding="utf-8").splitlines()]
    assert rows == [
        ["case_id", "source", "series_instance_uid"],
        ["ankle_001", "patient/pd", "1.2.826.0.1.3680043.2.1125.1.2"],
        ["ankle_002", "patient/t1", "1.2.826.0.1.3680043.2.1125.1.1"],
    ]
    for path in out.rglob("*"):
        if path.is_file():
            data = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
            assert b"DOE" not in data and b"PID-12345" not in data, path
    assert sorted(path.name for path in out.rglob("*")) == [
        "ankle_001_0000.nii.gz", "ankle_002_0000.nii.gz", "dataset.json", "imagesTs", "series.tsv"]


def test_pedseg_readers_accept_the_output(two_series, tmp_path):
    dicom, first, _ = two_series
    out = tmp_path / "out"
    import_dicom(dicom, out, "shoulder")
    report = check_dataset(out)
    assert report.problems == [f"{out / 'imagesTr'}: folder missing (at least one training case is required)"]
    assert report.n_test == 2 and len(report.volumes) == 2  # the test images themselves pass every check
    dataset, problems = scan_dataset(out)  # read_dataset refuses it: no training cases, as data check says
    assert problems == report.problems
    assert dataset.labels == joint_labels("shoulder") and dataset.train == ()
    assert [(case.case_id, case.label) for case in dataset.test] == [("shoulder_001", None), ("shoulder_002", None)]
    data, affine = load_volume(dataset.test[1].image)
    np.testing.assert_array_equal(data, first)
    np.testing.assert_allclose(affine, _expected_affine(_rotation(25.0)), atol=1e-4)


def test_axial_series_is_lps_in_dicom_and_ras_in_nifti(tmp_path):
    """Plain axial slices (rows run to patient left, columns to posterior): nibabel sees L, P, S axes."""
    dicom = tmp_path / "dicom"
    volume = _volume((5, 4, 3))
    _write_series(dicom / "axial", volume, "1.2.3.5", frame=np.eye(3))
    (case,) = import_dicom(dicom, tmp_path / "out", "knee").cases
    image = nib.load(case.image)
    assert nib.aff2axcodes(image.affine) == ("L", "P", "S")
    np.testing.assert_allclose(image.affine, [[-0.6, 0, 0, -12.5], [0, -0.8, 0, 30.0], [0, 0, 3.0, 41.0],
                                              [0, 0, 0, 1]], atol=1e-5)
    np.testing.assert_array_equal(np.asanyarray(image.dataobj), volume)
    np.testing.assert_allclose(image.header.get_zooms(), SPACING, atol=1e-5)


def test_several_series_in_one_folder(tmp_path):
    """Series of different sizes side by side: each one is read from its own files only."""
    dicom = tmp_path / "dicom"
    small, large = _volume((5, 4, 3)), _volume((7, 6, 5), offset=500)
    _write_series(dicom, small, "1.2.3.1", seed=3, prefix="A")
    _write_series(dicom, large, "1.2.3.2", origin=ORIGIN + 5, seed=4, prefix="B")
    report = import_dicom(dicom, tmp_path / "out", "knee")
    assert [(case.series_uid, case.source) for case in report.cases] == [("1.2.3.1", dicom), ("1.2.3.2", dicom)]
    np.testing.assert_array_equal(np.asanyarray(nib.load(report.cases[0].image).dataobj), small)
    np.testing.assert_array_equal(np.asanyarray(nib.load(report.cases[1].image).dataobj), large)
    assert (tmp_path / "out" / "series.tsv").read_text(encoding="utf-8").splitlines()[1] == "knee_001\t.\t1.2.3.1"


def test_single_multi_frame_file(tmp_path):
    """One enhanced MR file holding the whole volume (SimpleITK writes a 3D image so): SimpleITK's geometry."""
    dicom = tmp_path / "dicom"
    (dicom / "mf").mkdir(parents=True)
    volume = _volume((5, 4, 6))
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.T))
    image.SetSpacing(SPACING)
    image.SetOrigin(tuple(ORIGIN))
    image.SetDirection(tuple(_rotation(25.0).ravel()))
    image.SetMetaData("0008|0060", "MR")
    writer = sitk.ImageFileWriter()
    writer.SetImageIO("GDCMImageIO")
    writer.SetFileName(str(dicom / "mf" / "volume"))
    writer.Execute(image)
    (case,) = import_dicom(dicom, tmp_path / "out", "knee").cases
    written = nib.load(case.image)
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), volume)
    np.testing.assert_allclose(written.affine, _expected_affine(_rotation(25.0)), atol=1e-4)


def test_missing_slice_is_refused_and_nothing_written(tmp_path, capfd):
    dicom = tmp_path / "dicom"
    paths = _write_series(dicom / "gap", _volume((5, 4, 6)), "1.2.3.9")
    paths[3].unlink()
    (line,) = _refused(dicom, tmp_path)
    assert line == (f"{dicom / 'gap'}: series 1.2.3.9: missing slices: gap of 6 mm between {paths[2].name} and "
                    f"{paths[4].name} where slices are 3 mm apart (1 slice(s) missing in 1 gap(s))")
    assert "WARNING" not in capfd.readouterr().err  # ITK's own warning about the gap is not shown


def test_uneven_spacing(tmp_path):
    dicom = tmp_path / "dicom"
    _write_series(dicom / "uneven", _volume((5, 4, 4)), "1.2.3.10", heights=[0.0, 3.0, 6.0, 7.7])
    assert _refused(dicom, tmp_path) == [f"{dicom / 'uneven'}: series 1.2.3.10: non-uniform slice spacing: steps from "
                                    "1.7 to 3 mm between slice positions (missing or extra slices?)"]


def test_repeated_positions(tmp_path):
    """Two echoes under one SeriesInstanceUID: every position occurs twice."""
    dicom = tmp_path / "dicom"
    _write_series(dicom / "echoes", _volume((5, 4, 3)), "1.2.3.11", prefix="E1_")
    _write_series(dicom / "echoes", _volume((5, 4, 3), 99), "1.2.3.11", prefix="E2_", first_instance=4)
    (line,) = _refused(dicom, tmp_path)
    assert line.startswith(f"{dicom / 'echoes'}: series 1.2.3.11: mixed series: 3 slice position(s) occur more "
                           "than once")


def test_mixed_sizes_in_one_series(tmp_path):
    dicom = tmp_path / "dicom"
    _write_series(dicom / "mixed", _volume((5, 4, 3)), "1.2.3.20", prefix="A")
    _write_series(dicom / "mixed", _volume((6, 4, 2)), "1.2.3.20", prefix="B", first_instance=4,
                  heights=[9.0, 12.0])
    assert _refused(dicom, tmp_path) == [f"{dicom / 'mixed'}: series 1.2.3.20: mixed series: slices of different sizes "
                                    "(5x4 in 3 file(s), 6x4 in 2 file(s))"]


def test_mixed_orientations_in_one_series(tmp_path):
    dicom = tmp_path / "dicom"
    _write_series(dicom / "mixed", _volume((5, 4, 3)), "1.2.3.21", prefix="A")
    paths = _write_series(dicom / "mixed", _volume((5, 4, 1)), "1.2.3.21", frame=_rotation(60.0), prefix="B",
                          first_instance=4, heights=[9.0])
    (line,) = _refused(dicom, tmp_path)
    assert line.startswith(f"{dicom / 'mixed'}: series 1.2.3.21: mixed series: 1 of 4 slices have another "
                           "orientation (ImageOrientationPatient)")
    assert line.endswith(f"e.g. {paths[0].name}")


def test_mixed_pixel_spacing_in_one_series(tmp_path):
    dicom = tmp_path / "dicom"
    _write_series(dicom / "mixed", _volume((5, 4, 3)), "1.2.3.22", prefix="A")
    _write_series(dicom / "mixed", _volume((5, 4, 2)), "1.2.3.22", spacing=(0.5, 0.5, 3.0), prefix="B",
                  first_instance=4, heights=[9.0, 12.0])
    assert _refused(dicom, tmp_path) == [f"{dicom / 'mixed'}: series 1.2.3.22: mixed series: 2 of 5 slices have "
                                         "another pixel spacing than A0000, e.g. B0000"]


def test_slice_without_pixel_data(tmp_path):
    dicom = tmp_path / "dicom"
    paths = _write_series(dicom / "broken", _volume((5, 4, 4)), "1.2.3.30")
    _strip_pixel_data(paths[1])  # a middle slice: reported as what it is, not as a gap
    assert _refused(dicom, tmp_path) == [f"{dicom / 'broken'}: series 1.2.3.30: {paths[1].name} is DICOM but holds no "
                                    "pixel data"]


def test_unreadable_pixel_data(tmp_path):
    """Truncated pixel data passes the header checks; SimpleITK's failure is one line and nothing is written."""
    dicom = tmp_path / "dicom"
    _write_series(dicom / "a_good", _volume((5, 4, 3)), "1.2.3.31")
    paths = _write_series(dicom / "b_cut", _volume((5, 4, 3)), "1.2.3.32")
    paths[1].write_bytes(paths[1].read_bytes()[:-10])
    (line,) = _refused(dicom, tmp_path)
    assert line.startswith(f"{dicom / 'b_cut'}: series 1.2.3.32: cannot read pixel data: ")


def test_dicom_objects_without_pixels_are_skipped_or_refused(tmp_path):
    """A file of its own series with no pixels (a report, say) is skipped next to images, refused alone."""
    dicom = tmp_path / "dicom"
    (report_file,) = _write_series(dicom / "sr", _volume((5, 4, 1)), "1.2.3.40")
    _strip_pixel_data(report_file)
    with pytest.raises(PedsegError, match=r"no DICOM image series: 1 DICOM file\(s\), none with pixel data"):
        import_dicom(dicom, tmp_path / "out", "knee")
    assert not (tmp_path / "out").exists()
    _write_series(dicom / "t1", _volume((5, 4, 3)), "1.2.3.41")
    report = import_dicom(dicom, tmp_path / "out", "knee")
    assert [case.series_uid for case in report.cases] == ["1.2.3.41"]
    assert report.skipped == (f"{report_file}: DICOM without pixel data (a report, presentation state or the like)",)
    assert report.skipped[0] in report.summary()


def test_every_bad_series_is_listed(tmp_path):
    dicom = tmp_path / "dicom"
    _write_series(dicom / "a_good", _volume((5, 4, 3)), "1.2.3.50")
    paths = _write_series(dicom / "b_gap", _volume((5, 4, 5)), "1.2.3.51")
    paths[2].unlink()
    _write_series(dicom / "c_ct", _volume((5, 4, 3)), "1.2.3.52", modality="CT")
    _write_series(dicom / "d_single", _volume((5, 4, 1)), "1.2.3.53")
    problems = _refused(dicom, tmp_path)
    assert len(problems) == 3
    assert problems[0].startswith(f"{dicom / 'b_gap'}: series 1.2.3.51: missing slices")
    assert problems[1] == f"{dicom / 'c_ct'}: series 1.2.3.52: modality CT, not MR (pedseg segments MRI)"
    assert problems[2].startswith(f"{dicom / 'd_single'}: series 1.2.3.53: a single 2D slice")


def test_series_split_across_folders(tmp_path):
    dicom = tmp_path / "dicom"
    paths = _write_series(dicom / "one", _volume((5, 4, 6)), "1.2.3.60")
    (dicom / "two").mkdir()
    for path in paths[3:]:
        path.rename(dicom / "two" / path.name)
    (line,) = _refused(dicom, tmp_path)
    assert line.startswith(f"{dicom / 'one'}: series 1.2.3.60: also found in {dicom / 'one'}, {dicom / 'two'}; ")


@pytest.mark.parametrize("content", [None, "notes.txt"])
def test_no_dicom(tmp_path, content):
    dicom = tmp_path / "dicom"
    (dicom / "sub").mkdir(parents=True)
    if content:
        (dicom / "sub" / content).write_text("not DICOM", encoding="utf-8")
    with pytest.raises(PedsegError, match="no DICOM series found") as error:
        import_dicom(dicom, tmp_path / "out", "knee")
    assert str(error.value).startswith(f"{dicom}: ") and "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()


def test_bad_arguments(tmp_path):
    with pytest.raises(PedsegError, match="no such folder"):
        import_dicom(tmp_path / "missing", tmp_path / "out", "knee")
    (tmp_path / "file").write_text("x", encoding="utf-8")
    with pytest.raises(PedsegError, match="not a folder"):
        import_dicom(tmp_path / "file", tmp_path / "out", "knee")
    with pytest.raises(PedsegError, match="unknown joint 'elbow'"):
        import_dicom(tmp_path, tmp_path / "out", "elbow")


def test_existing_outputs_are_kept_unless_overwrite(two_series, tmp_path):
    dicom, _, _ = two_series
    out = tmp_path / "out"
    import_dicom(dicom, out, "knee")
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    (out / "series.tsv").write_text("edited\n", encoding="utf-8")
    before[out / "series.tsv"] = b"edited\n"
    with pytest.raises(PedsegError, match=r"dataset.json: already exists \(4 output file\(s\) would be overwritten"):
        import_dicom(dicom, out, "knee")
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == before

    report = import_dicom(dicom, out, "knee", overwrite=True)
    assert len(report.cases) == 2 and (out / "series.tsv").read_text(encoding="utf-8").startswith("case_id\t")
    assert sorted(path.name for path in out.rglob(".*")) == []  # no temporary files left

    stale = out / "imagesTs" / "knee_003_0000.nii.gz"
    stale.write_bytes(b"")
    with pytest.raises(PedsegError, match="knee_003_0000.nii.gz: not part of this import"):
        import_dicom(dicom, out, "knee", overwrite=True)


def test_pedseg_data_import_dicom_command(two_series, tmp_path, capsys):
    """`pedseg data import-dicom`: exit 0 and the cases listed; a bad series: exit 2, one line, nothing written;
    existing outputs are kept unless --overwrite."""
    from pedseg.cli import main

    dicom, _, _ = two_series
    out = tmp_path / "imported"
    assert main(["data", "import-dicom", str(dicom), str(out), "--joint", "knee"]) == 0
    printed = capsys.readouterr().out
    assert "knee_001" in printed and "knee_002" in printed and str(out / "imagesTs") in printed
    assert main(["data", "import-dicom", str(dicom), str(out), "--joint", "knee"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "--overwrite" in line
    assert main(["data", "import-dicom", str(dicom), str(out), "--joint", "knee", "--overwrite"]) == 0
    capsys.readouterr()
    bad = tmp_path / "bad"
    paths = _write_series(bad / "gap", _volume((5, 4, 6)), "1.2.3.99")
    paths[3].unlink()
    assert main(["data", "import-dicom", str(bad), str(tmp_path / "none"), "--joint", "knee"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"pedseg: error: {bad / 'gap'}: series 1.2.3.99: missing slices")
    assert not (tmp_path / "none").exists()

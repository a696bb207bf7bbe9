"""Dataset validation: one clear problem line per defect, all defects at once, nothing written."""

import hashlib
import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from pedseg_core.data.validate import check_dataset, require_valid_dataset
from pedseg_core.errors import DatasetError

IMAGE = "imagesTr/case_001_0000.nii.gz"
LABEL = "labelsTr/case_001.nii.gz"


def _snapshot(root):
    """Every path under root with the SHA-256 of each file's bytes."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        for path in sorted(root.rglob("*"))
    }


def _rewrite(path, change):
    """Rewrite a NIfTI file with change(data, affine) -> (data, affine)."""
    image = nib.load(path)
    data, affine = change(np.asanyarray(image.dataobj).copy(), image.affine.copy())
    nib.save(nib.Nifti1Image(data, affine), path)


def _edit_json(root, **changes):
    metadata = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    metadata.update(changes)
    (root / "dataset.json").write_text(json.dumps(metadata), encoding="utf-8")


def _corrupt_gzip(path):
    content = bytearray(path.read_bytes())
    content[30:-8] = bytes(len(content) - 38)
    path.write_bytes(content)


def _truncate(path):
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])


def _set_voxels(value, count=3):
    def change(data, affine):
        data.flat[:count] = value
        return data, affine

    return change


def _shift_origin(data, affine):
    affine[:3, 3] += 2.0
    return data, affine


def _empty_training_folders(root):
    for folder in ("imagesTr", "labelsTr"):
        shutil.rmtree(root / folder)
        (root / folder).mkdir()


BROKEN = {
    # id: (break the dataset at root, file the problem line names, what it says)
    "corrupt-gzip": (lambda root: _corrupt_gzip(root / IMAGE), IMAGE, "cannot read NIfTI"),
    "truncated": (lambda root: _truncate(root / LABEL), LABEL, "cannot read NIfTI"),
    "garbage-file": (lambda root: (root / IMAGE).write_bytes(b"hello"), IMAGE, "cannot read NIfTI"),
    "shape-mismatch": (
        lambda root: _rewrite(root / LABEL, lambda data, affine: (data[:, :, :-1], affine)),
        LABEL,
        "shape (20, 24, 5) does not match image shape (20, 24, 6)",
    ),
    "affine-mismatch": (lambda root: _rewrite(root / LABEL, _shift_origin), LABEL, "affine differs"),
    "undeclared-label": (
        lambda root: _rewrite(root / LABEL, _set_voxels(7)),
        LABEL,
        "label value(s) 7 not declared in dataset.json labels",
    ),
    "non-integer-label": (
        lambda root: _rewrite(root / LABEL, lambda data, affine: (data + 0.5, affine)),
        LABEL,
        "label values must be integers",
    ),
    "nan-intensities": (lambda root: _rewrite(root / IMAGE, _set_voxels(np.nan)), IMAGE, "3 voxels are NaN"),
    "inf-intensities": (lambda root: _rewrite(root / IMAGE, _set_voxels(np.inf, 2)), IMAGE, "2 voxels are"),
    "4d-image": (
        lambda root: _rewrite(root / IMAGE, lambda data, affine: (np.stack([data, data], -1), affine)),
        IMAGE,
        "expected a 3D volume, got shape (20, 24, 6, 2)",
    ),
    "empty-label": (
        lambda root: _rewrite(root / LABEL, lambda data, affine: (data[:0], affine)),
        LABEL,
        "empty volume",
    ),
    "missing-label": (lambda root: (root / LABEL).unlink(), IMAGE, f"missing label {{root}}/{LABEL}"),
    "missing-image": (lambda root: (root / IMAGE).unlink(), LABEL, f"missing image {{root}}/{IMAGE}"),
    "labelsTs-without-image": (
        lambda root: (root / "imagesTs/test_000_0000.nii.gz").unlink(),
        "labelsTs/test_000.nii.gz",
        "missing image {root}/imagesTs/test_000_0000.nii.gz",
    ),
    "stray-nifti": (
        lambda root: (root / "imagesTr/notes.nii.gz").write_bytes(b""),
        "imagesTr/notes.nii.gz",
        "image name must end in _0000.nii.gz",
    ),
    "wrong-ending": (
        lambda root: (root / LABEL).rename(root / "labelsTr/case_001.nii"),
        "labelsTr/case_001.nii",
        "label name must end in .nii.gz",
    ),
    "undeclared-channel": (
        lambda root: shutil.copy(root / IMAGE, root / "imagesTr/case_001_0001.nii.gz"),
        "imagesTr/case_001_0001.nii.gz",
        "channel 0001 is not declared",
    ),
    "missing-labelsTr": (lambda root: shutil.rmtree(root / "labelsTr"), "labelsTr", "folder missing"),
    "empty-imagesTr": (_empty_training_folders, "imagesTr", "at least one training case is required"),
    "missing-imagesTr": (
        lambda root: shutil.rmtree(root / "imagesTr"),
        "imagesTr",
        "folder missing (at least one training case is required)",
    ),
    "missing-dataset-json": (lambda root: (root / "dataset.json").unlink(), "dataset.json", "missing"),
    "invalid-json": (
        lambda root: (root / "dataset.json").write_text('{"labels"', encoding="utf-8"),
        "dataset.json",
        "not valid JSON",
    ),
    "json-not-object": (
        lambda root: (root / "dataset.json").write_text("[]", encoding="utf-8"),
        "dataset.json",
        "JSON object",
    ),
    "missing-keys": (
        lambda root: (root / "dataset.json").write_text("{}", encoding="utf-8"),
        "dataset.json",
        "missing required key(s): labels, channel_names, file_ending",
    ),
    "non-consecutive-labels": (
        lambda root: _edit_json(root, labels={"background": 0, "a": 1, "b": 3}),
        "dataset.json",
        "consecutive from 0, got [0, 1, 3]",
    ),
    "no-background": (
        lambda root: _edit_json(root, labels={"bone": 0, "a": 1, "b": 2}),
        "dataset.json",
        '"background": 0',
    ),
    "labels-not-mapping": (
        lambda root: _edit_json(root, labels=["a", "b"]),
        "dataset.json",
        "must map names",
    ),
    "label-value-not-int": (
        lambda root: _edit_json(root, labels={"background": 0, "a": "1", "b": 2}),
        "dataset.json",
        "values must be integers, got 'a': '1'",
    ),
    "region-labels": (
        lambda root: _edit_json(root, labels={"background": 0, "a": 1, "b": 2, "ab": [1, 2]}),
        "dataset.json",
        "region-based labels (lists of values) are not supported: ab",
    ),
    "multi-channel": (
        lambda root: _edit_json(root, channel_names={"0": "T1", "1": "T2"}),
        "dataset.json",
        "only single-channel MRI is supported, channel_names declares 0=T1, 1=T2",
    ),
    "unsupported-ending": (
        lambda root: _edit_json(root, file_ending=".mha"),
        "dataset.json",
        "'.mha' is not",
    ),
}


@pytest.mark.parametrize("breaks, offender, expected", BROKEN.values(), ids=BROKEN.keys())
def test_broken_dataset_reports_file_and_problem(write_dataset, breaks, offender, expected):
    root = write_dataset()
    breaks(root)
    before = _snapshot(root)
    report = check_dataset(root)
    assert _snapshot(root) == before
    assert not report.ok
    prefix = f"{root / offender}: "
    wanted = expected.format(root=root)
    assert any(line.startswith(prefix) and wanted in line for line in report.problems), report.problems
    assert all("\n" not in line and "Traceback" not in line for line in report.problems)


def test_valid_dataset_passes_with_summary(write_dataset):
    root = write_dataset(n_train=3, n_test=2)
    before = _snapshot(root)
    report = check_dataset(root)
    assert _snapshot(root) == before
    assert report.ok and report.problems == []
    assert (report.n_train, report.n_test) == (3, 2)
    summary = report.summary()
    for text in (
        root.name,
        "background=0, a=1, b=2",
        "3 training, 2 test",
        "20 x 24 x 6",
        "0.80 x 0.80 x 3.00 mm",
        "axis 2 in 5 case(s)",
        "intensity: ",
        "status: OK",
    ):
        assert text in summary


def test_summary_names_cases_with_another_through_plane_axis(write_dataset):
    root = write_dataset(n_train=3)
    _rewrite(root / IMAGE, lambda data, affine: (data, affine @ np.diag([5.0, 1.0, 1.0, 1.0])))
    report = check_dataset(root)
    assert "axis 0 in 1 case(s) (case_001)" in report.summary()


@pytest.mark.parametrize(
    "accepted",
    [
        lambda root: _rewrite(root / IMAGE, lambda data, affine: (data[..., None], affine)),
        lambda root: _rewrite(root / LABEL, lambda data, affine: (data.astype(np.float32), affine)),
        lambda root: _rewrite(root / LABEL, lambda data, affine: (np.zeros_like(data), affine)),
        lambda root: _rewrite(root / LABEL, lambda data, affine: (data, affine + 1e-5)),
        lambda root: (root / "imagesTr/README.txt").write_text("notes", encoding="utf-8"),
        lambda root: shutil.rmtree(root / "labelsTs"),
    ],
    ids=[
        "4d-singleton-image",
        "float-label",
        "all-background",
        "tiny-affine-change",
        "readme",
        "no-labelsTs",
    ],
)
def test_acceptable_variations(write_dataset, accepted):
    root = write_dataset()
    accepted(root)
    report = check_dataset(root)
    assert report.ok, report.problems


def test_collects_all_problems_at_once(write_dataset):
    root = write_dataset(n_train=3)
    _rewrite(root / "imagesTr/case_000_0000.nii.gz", _set_voxels(np.nan))
    (root / LABEL).unlink()
    _rewrite(root / "labelsTr/case_002.nii.gz", _set_voxels(3))
    _edit_json(root, channel_names={"0": "T1", "1": "T2"})
    problems = check_dataset(root).problems
    assert len(problems) == 4, problems
    assert [line.split(": ")[0] for line in problems] == [
        str(root / "dataset.json"),
        str(root / IMAGE),
        str(root / "imagesTr/case_000_0000.nii.gz"),
        str(root / "labelsTr/case_002.nii.gz"),
    ]


@pytest.mark.parametrize("make_root", [lambda tmp: tmp / "absent", lambda tmp: tmp / "file.txt"])
def test_root_not_a_dataset_folder(tmp_path, make_root):
    (tmp_path / "file.txt").write_text("x", encoding="utf-8")
    root = make_root(tmp_path)
    report = check_dataset(root)
    assert not report.ok and report.problems[0].startswith(f"{root}: ")
    assert "dataset" in report.summary()


def test_require_valid_dataset(write_dataset):
    root = write_dataset()
    assert [case.case_id for case in require_valid_dataset(root).train] == ["case_000", "case_001"]
    (root / LABEL).unlink()
    with pytest.raises(DatasetError) as caught:
        require_valid_dataset(root)
    assert caught.value.root == root
    assert caught.value.problems == check_dataset(root).problems

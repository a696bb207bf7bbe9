"""Reading and writing nnU-Net v2 raw datasets: dataset.json, case pairing and NIfTI loading."""

import json

import nibabel as nib
import numpy as np
import pytest

from pedseg_core.data.nifti import load_volume
from pedseg_core.data.nnunet import (
    case_id_of_file,
    case_id_of_image,
    case_id_of_label,
    image_file,
    label_file,
    mri_dataset_json,
    read_dataset,
    read_dataset_json,
    write_dataset_json,
)
from pedseg_core.errors import DatasetError, PedsegError


def _edit_json(root, **changes):
    path = root / "dataset.json"
    metadata = json.loads(path.read_text(encoding="utf-8"))
    metadata.update(changes)
    path.write_text(json.dumps(metadata), encoding="utf-8")


def test_read_dataset_pairs_images_and_labels(write_dataset):
    root = write_dataset(n_train=3, n_test=2)
    dataset = read_dataset(root)
    assert dataset.root == root
    assert dataset.name == root.name
    assert dataset.labels == {"background": 0, "a": 1, "b": 2}
    assert dataset.bones == ["a", "b"]
    assert dataset.num_classes == 3
    assert dataset.file_ending == ".nii.gz"
    assert [case.case_id for case in dataset.train] == ["case_000", "case_001", "case_002"]
    assert dataset.train[1].image == root / "imagesTr" / "case_001_0000.nii.gz"
    assert dataset.train[1].label == root / "labelsTr" / "case_001.nii.gz"
    assert [case.case_id for case in dataset.test] == ["test_000", "test_001"]
    assert dataset.test[0].label == root / "labelsTs" / "test_000.nii.gz"


def test_labels_sorted_by_value_and_name_defaults_to_folder(write_dataset):
    root = write_dataset(labels={"b": 2, "background": 0, "a": 1})
    _edit_json(root, name=None)
    dataset = read_dataset(root)
    assert list(dataset.labels) == ["background", "a", "b"]
    assert dataset.name == root.name


def test_test_images_without_labels(write_dataset):
    dataset = read_dataset(write_dataset(n_test=2, test_labels=False))
    assert [case.label for case in dataset.test] == [None, None]


def test_unrelated_files_are_ignored(write_dataset):
    root = write_dataset()
    (root / "imagesTr" / "README.txt").write_text("notes", encoding="utf-8")
    (root / "imagesTr" / ".DS_Store").write_bytes(b"\0")
    (root / "imagesTr" / "._case_000_0000.nii.gz").write_bytes(b"\0")
    (root / "labelsTr" / "old").mkdir()
    assert len(read_dataset(root).train) == 2


def test_read_dataset_reads_no_image_data(write_dataset):
    root = write_dataset()
    (root / "imagesTr" / "case_000_0000.nii.gz").write_bytes(b"not an image")
    assert len(read_dataset(root).train) == 2


@pytest.mark.parametrize(
    "breaks, expected",
    [
        (lambda root: (root / "dataset.json").unlink(), "dataset.json: missing"),
        (lambda root: (root / "dataset.json").write_text("{", encoding="utf-8"), "dataset.json: not valid JSON"),
        (lambda root: _edit_json(root, channel_names=None), "missing required key(s): channel_names"),
        (lambda root: (root / "labelsTr/case_000.nii.gz").unlink(), "case_000_0000.nii.gz: missing label"),
    ],
    ids=["no-json", "bad-json", "missing-key", "missing-label"],
)
def test_read_dataset_raises_for_structural_problems(write_dataset, breaks, expected):
    root = write_dataset()
    breaks(root)
    with pytest.raises(DatasetError) as caught:
        read_dataset(root)
    assert caught.value.root == root
    assert any(expected in problem for problem in caught.value.problems), caught.value.problems


@pytest.mark.parametrize(
    "name, ending, case_id",
    [("knee_003_0000.nii.gz", ".nii.gz", "knee_003"), ("a_0000_0000.nii", ".nii", "a_0000")],
)
def test_case_id_of_image(tmp_path, name, ending, case_id):
    assert case_id_of_image(tmp_path / name, ending) == case_id


@pytest.mark.parametrize("name", ["knee_003_0001.nii.gz", "knee_003.nii.gz", "_0000.nii.gz"])
def test_case_id_of_image_rejects_other_names(name):
    with pytest.raises(PedsegError, match="must end in _0000.nii.gz"):
        case_id_of_image(name, ".nii.gz")


def test_load_volume_returns_float_images_and_integer_labels(write_dataset):
    root = write_dataset()
    image, affine = load_volume(root / "imagesTr" / "case_000_0000.nii.gz")
    label, label_affine = load_volume(root / "labelsTr" / "case_000.nii.gz")
    assert image.dtype == np.float32 and image.shape == (20, 24, 6)
    assert np.issubdtype(label.dtype, np.integer) and set(np.unique(label)) == {0, 1, 2}
    assert affine.shape == (4, 4) and np.array_equal(affine, label_affine)
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), [0.8, 0.8, 3.0], rtol=1e-6)


def test_load_volume_converts_float64_and_squeezes_singleton_4d(tmp_path):
    path = tmp_path / "x.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 5, 6, 1)), np.eye(4)), path)
    data, _ = load_volume(path)
    assert data.shape == (4, 5, 6) and data.dtype == np.float32


@pytest.mark.parametrize(
    "shape, expected", [((4, 5, 6, 2), "expected a 3D volume"), ((4, 5), "expected a 3D volume")]
)
def test_load_volume_rejects_non_3d(tmp_path, shape, expected):
    path = tmp_path / "x.nii.gz"
    nib.save(nib.Nifti1Image(np.ones(shape, dtype=np.float32), np.eye(4)), path)
    with pytest.raises(DatasetError, match=expected):
        load_volume(path)


@pytest.mark.parametrize("content", [b"", b"garbage", b"\x1f\x8b\x08\x00garbage"])
def test_load_volume_unreadable_file(tmp_path, content):
    path = tmp_path / "x.nii.gz"
    path.write_bytes(content)
    with pytest.raises(DatasetError) as caught:
        load_volume(path)
    assert caught.value.problems[0].startswith(f"{path}: cannot read NIfTI: ")
    assert "\n" not in str(caught.value)


def test_a_cases_file_names_are_named_in_one_place(tmp_path):
    assert (image_file("knee_003", ".nii.gz"), label_file("knee_003", ".nii")) == ("knee_003_0000.nii.gz",
                                                                                  "knee_003.nii")
    assert case_id_of_image(tmp_path / image_file("knee_003", ".nii.gz"), ".nii.gz") == "knee_003"
    assert case_id_of_label(tmp_path / "knee_003.nii.gz") == case_id_of_label("knee_003.nii") == "knee_003"
    with pytest.raises(PedsegError, match="label name must end in .nii.gz or .nii"):
        case_id_of_label("knee_003.mha")


@pytest.mark.parametrize("name, case_id", [("knee_003_0000.nii.gz", "knee_003"), ("knee_003.nii.gz", "knee_003"),
                                           ("knee_003_0000.nii", "knee_003"), ("scan.mha", "scan.mha")])
def test_case_id_of_file_takes_an_image_or_a_label(tmp_path, name, case_id):
    assert case_id_of_file(tmp_path / name) == case_id


def test_written_dataset_json_reads_back_as_a_dataset(tmp_path):
    metadata = mri_dataset_json("knee", {"background": 0, "femur": 1}, 1, "a knee", joint="knee")
    assert list(metadata) == ["name", "description", "channel_names", "labels", "numTraining", "file_ending",
                              "joint"]
    path = write_dataset_json(tmp_path, metadata)
    assert path == tmp_path / "dataset.json" and path.read_text(encoding="utf-8").endswith("}\n")
    assert read_dataset_json(tmp_path) == read_dataset_json(path) == metadata
    for folder in ("imagesTr", "labelsTr"):
        (tmp_path / folder).mkdir()
    (tmp_path / "imagesTr" / image_file("knee_000", metadata["file_ending"])).touch()
    (tmp_path / "labelsTr" / label_file("knee_000", metadata["file_ending"])).touch()
    dataset = read_dataset(tmp_path)
    assert (dataset.name, dataset.bones, [case.case_id for case in dataset.train]) == ("knee", ["femur"],
                                                                                        ["knee_000"])


@pytest.mark.parametrize("content, message", [
    (None, "dataset.json: missing"),
    ("{broken", "dataset.json: not valid JSON"),
    ("[1, 2]", "dataset.json: must contain a JSON object, found list"),
])
def test_read_dataset_json_is_one_line_naming_the_file(tmp_path, content, message):
    if content is not None:
        (tmp_path / "dataset.json").write_text(content, encoding="utf-8")
    with pytest.raises(PedsegError, match=message) as error:
        read_dataset_json(tmp_path)
    assert str(tmp_path / "dataset.json") in str(error.value) and "\n" not in str(error.value)

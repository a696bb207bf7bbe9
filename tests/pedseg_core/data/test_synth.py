"""The joint catalogue, the synthetic dataset generator and the QC montage, on real files."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from pedseg_core.data.joints import JOINT_BONES, joint_labels
from pedseg_core.data.montage import save_montage
from pedseg_core.data.synth import PROTOCOLS, synthesize, synthesize_joint
from pedseg_core.errors import PedsegError

N_TRAIN, N_TEST, SEED = 2, 1, 0


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """{joint: dataset folder} for every joint, written once for the module."""
    return synthesize(tmp_path_factory.mktemp("synth"), list(JOINT_BONES), N_TRAIN, N_TEST, SEED)


def _cases(root):
    """[(image path, label path)] of a dataset's training then test cases."""
    pairs = []
    for split in ("Tr", "Ts"):
        for image in sorted((root / f"images{split}").glob("*_0000.nii.gz")):
            pairs.append((image, root / f"labels{split}" / image.name.replace("_0000.nii.gz", ".nii.gz")))
    return pairs


def _load(path):
    image = nib.load(path)
    return np.asanyarray(image.dataobj), image


def test_joint_labels():
    assert joint_labels("knee") == {"background": 0, "femur": 1, "tibia": 2, "patella": 3}
    assert list(joint_labels("shoulder")) == ["background", "humerus", "scapula"]
    with pytest.raises(PedsegError, match="ankle, knee, shoulder"):
        joint_labels("elbow")


def test_layout_and_dataset_json(datasets):
    assert set(datasets) == set(JOINT_BONES)
    for joint, root in datasets.items():
        assert root.name == joint
        metadata = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
        assert metadata["name"] == metadata["joint"] == joint
        assert metadata["labels"] == joint_labels(joint)
        assert metadata["channel_names"] == {"0": "MRI"}
        assert (metadata["numTraining"], metadata["numTest"], metadata["seed"]) == (N_TRAIN, N_TEST, SEED)
        assert metadata["file_ending"] == ".nii.gz"
        assert metadata["generator"].startswith("pedseg synth ")
        train = sorted(p.name for p in (root / "imagesTr").iterdir())
        test = sorted(p.name for p in (root / "imagesTs").iterdir())
        assert train == [f"{joint}_{i:03d}_0000.nii.gz" for i in range(N_TRAIN)]
        assert test == [f"{joint}_{i:03d}_0000.nii.gz" for i in range(N_TRAIN, N_TRAIN + N_TEST)]
        assert all(label.is_file() for _, label in _cases(root))


def test_headers_spacing_and_through_plane_axis(datasets):
    for joint, root in datasets.items():
        protocol = PROTOCOLS[joint]
        spacing = [protocol.inplane_mm, protocol.inplane_mm]
        spacing.insert(protocol.through_axis, protocol.slice_mm)
        for image_path, label_path in _cases(root):
            image, image_nii = _load(image_path)
            label, label_nii = _load(label_path)
            assert image.dtype == np.float32 and label.dtype == np.uint8
            assert image.shape == label.shape and image.ndim == 3
            assert np.allclose(image_nii.affine, label_nii.affine)
            assert not np.allclose(image_nii.affine, np.eye(4))
            assert not np.allclose(image_nii.affine[:3, 3], 0)
            assert np.allclose(image_nii.header.get_zooms(), spacing, atol=1e-4)
            assert np.allclose(np.linalg.norm(image_nii.affine[:3, :3], axis=0), spacing, atol=1e-4)
            assert int(np.argmax(image_nii.header.get_zooms())) == protocol.through_axis
            assert image_nii.header.get_qform(coded=True)[1] == image_nii.header.get_sform(coded=True)[1] == 1
            assert 0.0 <= image.min() and image.max() < 3000.0


def test_every_bone_in_every_case_and_never_touching(datasets):
    for joint, root in datasets.items():
        n_bones = len(JOINT_BONES[joint])
        for _, label_path in _cases(root):
            label, _ = _load(label_path)
            assert set(np.unique(label)) == set(range(n_bones + 1)), label_path.name
            assert np.bincount(label.ravel(), minlength=n_bones + 1)[1:].min() >= 100
            for axis in range(3):  # face neighbours never carry two different bones: a joint space is kept
                a, b = np.moveaxis(label, axis, 0)[:-1], np.moveaxis(label, axis, 0)[1:]
                assert not np.any((a > 0) & (b > 0) & (a != b)), (label_path.name, axis)


def test_marrow_brighter_than_cortical_shell(datasets):
    for joint, root in datasets.items():
        axis = PROTOCOLS[joint].through_axis
        in_plane = np.expand_dims(ndimage.generate_binary_structure(2, 1), axis)
        for image_path, label_path in _cases(root):
            image, _ = _load(image_path)
            label, _ = _load(label_path)
            bone = label > 0
            shell = bone & ~ndimage.binary_erosion(bone, in_plane)
            core = ndimage.binary_erosion(bone, in_plane, iterations=3)
            assert core.sum() > 0
            assert image[core].mean() > 1.3 * image[shell].mean(), image_path.name


def test_deterministic_by_seed(datasets, tmp_path):
    again = synthesize_joint(tmp_path / "same", "ankle", n_train=1, n_test=0, seed=SEED)
    other = synthesize_joint(tmp_path / "other", "ankle", n_train=1, n_test=0, seed=SEED + 1)
    name = "ankle_000_0000.nii.gz"
    reference, _ = _load(datasets["ankle"] / "imagesTr" / name)
    same, _ = _load(again / "imagesTr" / name)
    different, _ = _load(other / "imagesTr" / name)
    assert same.tobytes() == reference.tobytes()
    assert _load(again / "labelsTr" / "ankle_000.nii.gz")[0].tobytes() == (
        _load(datasets["ankle"] / "labelsTr" / "ankle_000.nii.gz")[0].tobytes()
    )
    assert different.shape != reference.shape or not np.array_equal(different, reference)


def test_refuses_non_empty_output_and_leaves_it_alone(tmp_path):
    target = tmp_path / "knee"
    target.mkdir()
    (target / "keep.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(PedsegError, match="not empty"):
        synthesize_joint(target, "knee", 1, 0, SEED)
    with pytest.raises(PedsegError, match="not empty"):
        synthesize(tmp_path, ["ankle", "knee"], 1, 0, SEED)
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    assert (target / "keep.txt").read_text(encoding="utf-8") == "mine"
    assert not (tmp_path / "ankle").exists()  # nothing written before the check failed


@pytest.mark.parametrize(
    ("joints", "n_train", "n_test", "seed"),
    [
        (["elbow"], 1, 0, 0),
        ([], 1, 0, 0),
        (["knee", "knee"], 1, 0, 0),
        (["knee"], 0, 0, 0),
        (["knee"], 1, 0, -1),
    ],
)
def test_bad_arguments_are_user_errors(tmp_path, joints, n_train, n_test, seed):
    with pytest.raises(PedsegError):
        synthesize(tmp_path / "out", joints, n_train, n_test, seed)
    assert not (tmp_path / "out").exists()


def test_save_montage_writes_png(datasets, tmp_path):
    out_png = tmp_path / "qc" / "montage.png"
    save_montage([datasets[joint] for joint in JOINT_BONES], out_png)
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out_png.stat().st_size > 10_000
    with pytest.raises(PedsegError):
        save_montage([tmp_path / "missing"], tmp_path / "x.png")
